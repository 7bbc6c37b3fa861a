"""`bench run` and `bench status` resolve their cell options with one function (bench.sched.selection), so status
shows the cells run runs: names given win, the rest come from the matrix, and the matrix's datasets, profile and
suites apply only with --matrix or when no cells are named. Nothing is trained or attacked here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_config
from bench.errors import BenchError
from bench.sched.selection import select_cells

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "bench.toml")


def test_named_cells_run_on_the_settings_dataset_and_profile(cfg):
    s = cfg.settings
    sel = select_cells(cfg, defense=["natural"], attack=["fgsm"])
    assert (sel.defenses, sel.attacks, sel.suites, sel.datasets, sel.profile, sel.seed) == \
        (["natural"], ["fgsm"], [], [s.dataset], s.profile, s.seed)
    assert sel.matrix is None and not sel.whole_matrix


def test_matrix_scope_applies_with_matrix_or_when_nothing_is_named(cfg):
    nightly = cfg.matrices["nightly"]
    assert nightly.profile != cfg.settings.profile and nightly.datasets != [cfg.settings.dataset]  # the test can fail
    sel = select_cells(cfg, matrix="nightly")
    assert (sel.defenses, sel.attacks, sel.datasets, sel.profile) == \
        (nightly.defenses, nightly.attacks, nightly.datasets, nightly.profile)
    assert sel.matrix == "nightly" and sel.whole_matrix
    narrowed = select_cells(cfg, matrix="nightly", attack=["fgsm"], dataset="mnist", seed=3)
    assert (narrowed.defenses, narrowed.attacks, narrowed.datasets, narrowed.profile, narrowed.seed) == \
        (nightly.defenses, ["fgsm"], ["mnist"], nightly.profile, 3)
    assert narrowed.matrix == "nightly" and not narrowed.whole_matrix
    default = cfg.matrices[cfg.settings.matrix]
    bare = select_cells(cfg)
    assert (bare.defenses, bare.attacks, bare.datasets) == (default.defenses, default.attacks, default.datasets)
    assert bare.profile == (default.profile or cfg.settings.profile)


def test_suites_come_from_the_matrix_unless_attacks_are_named(cfg):
    suites = cfg.matrices["suites"]
    assert suites.suites
    assert select_cells(cfg, matrix="suites").suites == suites.suites
    assert select_cells(cfg, matrix="suites", defense=["natural"]).suites == suites.suites
    assert select_cells(cfg, matrix="suites", attack=["fgsm"]).suites == []
    only = select_cells(cfg, defense=["natural"], suite=["linf"])
    assert (only.attacks, only.suites) == ([], ["linf"])


@pytest.mark.parametrize("kwargs, needle", [
    (dict(matrix="nope"), "Unknown matrix 'nope'"),
    (dict(defense=["naturl"], attack=["fgsm"]), "naturl"),
    (dict(defense=["natural"], attack=["fgsm"], dataset="cifar100"), "cifar100"),
    (dict(defense=["natural"], suite=["linff"]), "linff"),
], ids=["matrix", "defense", "dataset", "suite"])
def test_bad_names_are_refused(cfg, kwargs, needle):
    with pytest.raises(BenchError) as e:
        select_cells(cfg, **kwargs)
    assert needle in str(e.value)


def _status(*args, cwd):
    env = {**os.environ, "BENCH_PROGRESS": "0", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bench.cli", "status", "--config", str(REPO / "bench.toml"),
                           "--results-dir", str(cwd / "results"), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_status_shows_the_cells_run_would_run(tmp_path):
    cfg = load_config(REPO / "bench.toml")
    s, nightly = cfg.settings, cfg.matrices["nightly"]
    named = _status("-d", "natural", "-a", "fgsm", cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert f"cells · {s.dataset} · {s.profile} · seed {s.seed}" in named.stdout, named.stdout
    assert "cells: 1 untrained" in named.stdout
    whole = _status("--matrix", "nightly", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    for ds in nightly.datasets:
        assert f"nightly · {ds} · {nightly.profile}" in whole.stdout, whole.stdout
    counts = next(line for line in whole.stdout.splitlines() if line.startswith("cells: "))[len("cells: "):]
    # queued where the zoo holds the checkpoint, untrained elsewhere: every cell of the matrix, once
    assert sum(int(c.split()[0]) for c in counts.split(", ")) == \
        len(nightly.datasets) * len(nightly.defenses) * len(nightly.attacks), counts
    bad = _status("--matrix", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown matrix 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "results").exists()  # status reads; it makes no folder
