"""A `backward` surrogate a defense does not have is refused when the cells are resolved (Defense.surrogate_problem,
bench.runner.check_backward): before anything is trained or written, as one paragraph, exit 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.audit import audit_surrogates
from bench.registry import plugins

REPO = Path(__file__).resolve().parents[1]


def _defaults(cls):
    try:
        return cls.Params()
    except Exception:  # a plug-in whose params have required fields (a ready-made model's entry)
        return None


@pytest.mark.parametrize("name", sorted(plugins("defense")))
def test_every_declared_surrogate_passes_and_a_misspelled_one_does_not(name):
    cls = plugins("defense")[name]
    params = _defaults(cls)
    if params is None:
        pytest.skip(f"{name} has no default params")
    for spec in (None, "", "autograd", *cls.surrogates, *audit_surrogates(cls)):
        if re.search(r":[A-Z]", spec or ""):  # a template such as 'smooth:S'; audit_surrogates gives instances
            continue
        assert cls.surrogate_problem(params, spec) == "", (name, spec)
    assert cls.surrogate_problem(params, "smooth:4+top_u:2Tx"), name  # check_backward names the value


def test_the_sparse_grammar_names_the_bad_part():
    cls = plugins("defense")["sparse"]
    params = cls.Params()
    for spec in ("smooth:4+top_u:2T", "smooth:0", "identity+top_u:30", "top_u:1.5T", "frontend_identity"):
        assert cls.surrogate_problem(params, spec) == "", spec
    assert "steepness must be >= 0" in cls.surrogate_problem(params, "smooth:-1")
    assert "U = 501 must lie in [1, 500]" in cls.surrogate_problem(params, "top_u:501")
    # the autoencoder front end quantizes nothing: its grammar has no activation part
    ae = plugins("defense")["sparse_ae"]
    assert "no quantizing activation" in ae.surrogate_problem(ae.Params(), "smooth:4+top_u:2T")


def test_a_ready_made_model_has_the_surrogates_its_entry_declares():
    from bench.user_model import ModelDefense, ModelParams

    one = ModelParams(model="m.py:f", bpda={"front.act": "identity"})
    assert ModelDefense.surrogate_problem(one, "bpda") == ""
    assert "Allowed: bpda" in ModelDefense.surrogate_problem(one, "bpda:front.act")
    two = ModelParams(model="m.py:f", bpda={"a": "identity", "b": "identity"})
    assert ModelDefense.surrogate_problem(two, "bpda:b") == ""
    assert "none (declare bpda" in ModelDefense.surrogate_problem(ModelParams(model="m.py:f"), "bpda")


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=300)


@pytest.mark.parametrize("defense, attack, words", [
    ("sparse", "bad_backward", ["attacks.bad_backward", "'smooth:4+top_u:3X'", "U = '3X'", "Allowed"]),
    ("natural", "pgd_linf_bpda", ["attacks.pgd_linf_bpda", "'smooth:4+top_u:2T'", "'natural'",
                                  "plainly differentiable"]),
])
def test_a_surrogate_the_defense_lacks_stops_the_run_before_anything_is_written(tmp_path, defense, attack, words):
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + '\n[attacks.bad_backward]\nextends = "pgd_linf_bpda"\n'
                    'backward = "smooth:4+top_u:3X"\n')
    results = tmp_path / "r"
    p = _bench("run", "-d", defense, "-a", "pgd_linf", "-a", attack, "--profile", "smoke", "--config", str(path),
               "--results-dir", str(results))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert all(w in p.stderr for w in words), p.stderr
    assert not results.exists()
