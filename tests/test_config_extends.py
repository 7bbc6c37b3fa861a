"""`extends = "ENTRY"` in [defenses.*] / [attacks.*]: a variant starts from its parent entry (its plug-in, keys and
per-dataset / per-profile tables, merged key by key) instead of from the plug-in's defaults; cycles and unknown
parents are errors naming the chain."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_config
from bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, extra: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + "\n" + extra)
    return path


def test_a_variant_keeps_its_parents_dataset_and_profile_tables(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.pgd_linf_3steps]
extends = "pgd_linf"
steps = 3
[attacks.pgd_linf_3steps.profile.smoke]
restarts = 2

[attacks.pgd_linf_plugin_only]
plugin = "pgd_linf"
steps = 3
"""))
    for dataset in cfg.datasets:
        for profile in cfg.profiles:
            parent = cfg.attack("pgd_linf", dataset, profile).params.model_dump()
            child = cfg.attack("pgd_linf_3steps", dataset, profile).params.model_dump()
            expected = dict(parent)
            # the variant's own keys, where no more specific layer of the parent sets them
            raw = cfg.entries["attack"]["pgd_linf"]
            more_specific = {**raw.get("profile", {}).get(profile, {}),
                             **raw.get("dataset", {}).get(dataset, {}),
                             **raw.get("dataset", {}).get(dataset, {}).get("profile", {}).get(profile, {})}
            if "steps" not in more_specific:
                expected["steps"] = 3
            if profile == "smoke" and "restarts" not in {**raw.get("dataset", {}).get(dataset, {}),
                                                         **raw.get("dataset", {}).get(dataset, {}).get("profile", {}).get(profile, {})}:
                expected["restarts"] = 2
            assert child == expected, (dataset, profile)
    assert cfg.attack("pgd_linf_3steps", "mnist", "smoke").params.eps == cfg.attack("pgd_linf", "mnist", "smoke").params.eps
    # without extends the variant starts from the plug-in's defaults: MNIST at 8/255, the trap extends removes
    assert cfg.attack("pgd_linf_plugin_only", "mnist", "smoke").params.eps != cfg.attack("pgd_linf", "mnist", "smoke").params.eps


def test_a_chain_of_variants_resolves_in_order(tmp_path):
    cfg = load_config(_config(tmp_path, """
[attacks.v1]
extends = "pgd_linf"
steps = 7
[attacks.v2]
extends = "v1"
restarts = 3
"""))
    p = cfg.attack("v2", "cifar10", "paper").params
    assert (p.steps, p.restarts) == (7, 3) and cfg.entry("attack", "v2")["plugin"] == "pgd_linf"


@pytest.mark.parametrize("extra, words", [
    ('[attacks.a]\nextends = "b"\n[attacks.b]\nextends = "a"\n', ["cycle", "attacks.a -> attacks.b -> attacks.a"]),
    ('[attacks.a]\nextends = "a"\n', ["cycle", "attacks.a -> attacks.a"]),
    ('[attacks.a]\nextends = "pgd_linnf"\n', ["attacks.a.extends", "'pgd_linnf'", "pgd_linf"]),
    ('[defenses.d]\nextends = 3\n', ["defenses.d.extends", "3"]),
])
def test_cycles_and_unknown_parents_are_errors_naming_the_chain(tmp_path, extra, words):
    path = _config(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert all(w in str(err.value) for w in words), str(err.value)
    p = subprocess.run([sys.executable, "-m", "bench.cli", "list", "--config", str(path)], capture_output=True,
                       text=True, env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and words[0] in p.stderr, p.stderr
