"""`bench regress` on attack optimality: a minimum-norm attack whose per-sample norms grew (a weakened attack) is a
regression even where its success rate and mean norm stay within their tolerances, and even where it supplies the
best norms itself (scored against its own run's best it would look optimal); an honest re-run is not."""
import json

import numpy as np
import pytest

from bench.config import load_config
from bench.report.curves import optimality, slice_curves
from bench.report.regress import meta_path, run_regress, write_from_results
from bench.report.tables import Results
from synthetic_results import cell, fooling, write
from test_regress_planted import _bench  # the real `bench` console script: real exit codes, real click

N, CLEAN, EPS = 200, 180, 8 / 255
MATRIX = """
[matrices.mn]
profile = "smoke"
datasets = ["cifar10"]
defenses = ["natural"]
attacks = ["pgd_linf", "fmn_linf"]
"""


@pytest.fixture
def cfg(config_copy):
    with open(config_copy, "a") as f:
        f.write(MATRIX)
    return load_config(config_copy)


def _cells(scale=1.0):
    """natural × pgd_linf (fools 150 of the 180 correct points, at eps) and × fmn_linf (fools all 180 at norms
    between 0.5/255 and 6/255, times `scale`), smoke profile, n = 200."""
    correct = [i >= N - CLEAN for i in range(N)]
    rng = np.random.default_rng(0)
    fmn = [float(v) * scale for v in rng.uniform(0.5 / 255, 6 / 255, N)]
    pgd_fooled = fooling(N, range(N - CLEAN, N - 30))
    return [cell("natural", "pgd_linf", correct, pgd_fooled, profile="smoke", norms=[EPS] * N),
            cell("natural", "fmn_linf", correct, fooling(N, range(N - CLEAN, N)), profile="smoke", min_norm=True,
                 norms=fmn, eps="")]


def _regress(tmp_path, cfg, scale):
    write(tmp_path / "base", _cells())
    base = tmp_path / "baselines" / "mn-smoke-cpu.csv"
    assert write_from_results(Results.load(tmp_path / "base"), base, None, cfg, "mn")[0] == 0
    write(tmp_path / f"now{scale}", _cells(scale))
    return run_regress(Results.load(tmp_path / f"now{scale}"), base, None, cfg)


def test_the_baseline_stores_the_attack_norms_and_the_best_ones(tmp_path, cfg):
    _regress(tmp_path, cfg, 1.0)
    stored = json.loads(meta_path(tmp_path / "baselines" / "mn-smoke-cpu.csv").read_text())["min_norm_evidence"]
    assert list(stored) == ["cifar10|natural|fmn_linf|smoke|0"]  # the fixed-eps cell has no optimality
    entry = stored["cifar10|natural|fmn_linf|smoke|0"]
    assert entry["norm"] == "linf" and len(entry["index"]) == len(entry["norms"]) == len(entry["best"]) == N
    assert entry["norms"].count(0.0) == N - CLEAN  # misclassified clean: norm 0


def test_an_honest_rerun_passes(tmp_path, cfg):
    code, text = _regress(tmp_path, cfg, 1.0)
    assert code == 0, text
    code, text = _regress(tmp_path, cfg, 1.004)  # rounding-sized wobble
    assert code == 0 and "optimality" not in text.split("No regression")[1], text


def test_a_weakened_attack_fails_on_optimality_where_mean_norm_and_success_rate_do_not(tmp_path, cfg):
    # every norm 8 % larger: below norm_rtol (10 %), all still fooled; 0.926 = 1 / 1.08, as the areas run up to the
    # largest norm of either run
    code, text = _regress(tmp_path, cfg, 1.08)
    assert code == 1, text
    assert "| cifar10/smoke/seed 0: natural × fmn_linf | drop | optimality | 1.000 | 0.926 (200 points) |" in text
    assert "mean_norm" not in text and "success_rate" not in text
    # scored against its own run only, the weakened attack still supplies every best norm: it looks optimal
    now = Results.load(tmp_path / "now1.08")
    curve = slice_curves(now.slice("cifar10", "smoke", 0))["linf"][0]
    assert optimality(curve, next(e for e in curve.attacks if e.attack == "fmn_linf")) == pytest.approx(1.0)


def test_a_baseline_without_stored_norms_skips_the_check(tmp_path, cfg):
    write(tmp_path / "base", _cells())
    base = tmp_path / "baselines" / "mn-smoke-cpu.csv"
    write_from_results(Results.load(tmp_path / "base"), base, None, cfg, "mn")
    meta = json.loads(meta_path(base).read_text())
    del meta["min_norm_evidence"]  # written before the check existed
    meta_path(base).write_text(json.dumps(meta))
    write(tmp_path / "now", _cells(1.08))
    code, text = run_regress(Results.load(tmp_path / "now"), base, None, cfg)
    assert code == 0 and "optimality |" not in text


# ------------------------------------------------------------------ a real run through the bench entry point

PLANTED = """
[matrices.planted_fmn]
profile = "smoke"
datasets = ["mnist"]
defenses = ["natural"]
attacks = ["fmn_linf"]
"""


@pytest.mark.slow
def test_a_real_weakened_fmn_fails_regress_and_an_honest_rerun_passes(tmp_path, config_copy, data_root):
    """The smoke MNIST natural model × fmn_linf (20 steps, 50 points): baseline, honest re-run (exit 0), then FMN
    with 10 steps planted in the settings (exit 1, its optimality named). Measured on 2 cores: optimality 1.000 ->
    0.800 with the success rate (100 %) and the mean norm within their tolerances; 5 steps also drop the success
    rate (to 20 %), 2 steps fool nothing."""
    with open(config_copy, "a") as f:
        f.write(PLANTED)
    common = ["--config", str(config_copy), "--results-dir", str(tmp_path / "r")]
    run = ["run", "--matrix", "planted_fmn", "--devices", "cpu", "--plain", "--data-root", str(data_root), *common]
    base = tmp_path / "planted_fmn-smoke-cpu.csv"
    code, out = _bench(*run)
    assert code == 0, out
    code, out = _bench("regress", "--baseline", str(base), "--matrix", "planted_fmn", "--write-baseline", *common)
    assert code == 0, out
    code, out = _bench(*run, "--force")  # the same cell again (the checkpoint is cached): an honest re-run
    assert code == 0, out
    code, out = _bench("regress", "--baseline", str(base), *common)
    assert code == 0, out
    with open(config_copy, "a") as f:
        f.write('\n[attacks.fmn_linf.dataset.mnist.profile.smoke]\nsteps = 10\n')
    code, out = _bench(*run, "--force")
    assert code == 0, out
    code, out = _bench("regress", "--baseline", str(base), *common)
    assert code == 1, out
    assert "| mnist/smoke/seed 0: natural × fmn_linf | drop | optimality |" in out, out
