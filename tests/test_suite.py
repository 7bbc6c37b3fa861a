"""Threat-model suites (bench.suite): each attack on the points the previous ones left robust gives exactly the
per-sample worst case of independent cells, appending an attack reuses the earlier stages, and a run killed
mid-suite resumes at the stage in flight."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError, ConfigError
from bench.runner import Env, run_cell
from bench.store import ResultsStore
from bench.suite import plan_suite, run_suite
from conftest import tiny_natural

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "tests" / "pause_hook"  # sitecustomize: BENCH_TEST_PAUSE stops a process at an exact moment
N_TEST = 120
# a small eps on MNIST, so that each attack leaves robust points and later stages still fool some (that a point's
# random starts do not depend on its batch is tested bitwise in tests/test_pgd_engine.py)
SUITES = "\n" + tiny_natural("suite_net") + """[attacks.s_weak]
# one short deterministic step: it leaves most points to the stages after it
plugin = "bim"
eps = 0.1
steps = 1
step_size = "eps/4"
[attacks.s_pgd]
plugin = "pgd_linf"
eps = 0.1
steps = 3
step_size = "eps/3"
restarts = 2
batch_size = 16
[attacks.s_cw]
plugin = "cw_linf"
eps = 0.1
steps = 6
step_size = "eps/3"
batch_size = 16
[attacks.s_pgd_other_eps]
plugin = "pgd_linf"
eps = 0.2
steps = 6

[suites.s3]
norm = "linf"
attacks = ["s_weak", "s_pgd", "s_cw"]
order = "listed"
[suites.s_cost]
# the default order: measured passes per point, cheapest first, unmeasured attacks after them as listed
norm = "linf"
attacks = ["s_cw", "s_pgd", "s_weak"]
[suites.s2]
# s3 without its last attack: s3 then reuses both of its stages
norm = "linf"
attacks = ["s_weak", "s_pgd"]
order = "listed"
"""


@pytest.fixture(scope="module")
def suite_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suite_cfg")
    path = folder / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + SUITES)
    return path


@pytest.fixture(scope="module")
def suite_env(suite_config, data_root, tmp_path_factory) -> Env:
    return Env.create(config=suite_config, data_root=data_root, device="cpu",
                      results_dir=tmp_path_factory.mktemp("suite_results"))


def _manifest(env: Env, row: dict) -> dict:
    return json.loads((env.store.root / "runs" / f"{row['cell']}.json").read_text())


def _robust(env: Env, row: dict) -> list[bool]:
    ps = _manifest(env, row)["per_sample"]
    return [c and not f for c, f in zip(ps["correct"], ps["fooled"])]


def test_suite_worst_case_equals_independent_cells_exactly(suite_env):
    env = suite_env
    cells = [run_cell(env, "suite_net", a, "mnist", "smoke", 0, N_TEST) for a in ("s_weak", "s_pgd", "s_cw")]
    row = run_suite(env, "suite_net", "s3", "mnist", "smoke", 0, N_TEST)
    expected = [all(v) for v in zip(*(_robust(env, c) for c in cells))]
    assert _robust(env, row) == expected
    # stronger than the worst case: every stage's verdict on the points it was given is the independent cell's
    given = [p for p, c in enumerate(_manifest(env, cells[0])["per_sample"]["correct"]) if c]
    for cell in cells:
        state = json.loads(next(p for p in (env.store.root / "suites").glob("*.json")
                                if json.loads(p.read_text())["attack"] == cell["attack"]).read_text())
        assert state["given"] == given or cell["attack"] != "s_weak"
        independent = _manifest(env, cell)["per_sample"]["fooled"]
        assert state["fooled"] == [independent[p] for p in state["given"]], cell["attack"]
    assert row["attack"] == "suite:s3" and row["norm"] == "linf" and float(row["eps"]) == pytest.approx(0.1)
    # the network the run's own [datasets.mnist] resolved "auto" to, in the cell's and the suite's manifest
    assert _manifest(env, row)["architecture"] == _manifest(env, cells[0])["architecture"] == \
        suite_env.cfg.datasets["mnist"].arch
    stages = _manifest(env, row)["suite"]["stages"]
    assert [s["attack"] for s in stages] == ["s_weak", "s_pgd", "s_cw"]
    # not a trivial case: something survives, and a later stage fools what the first one left
    assert 0 < sum(expected) < N_TEST and sum(s["fooled"] for s in stages[1:]) > 0
    assert stages[0]["given"] == round(float(row["clean_acc"]) * N_TEST)
    assert all(b["given"] == a["robust_after"] for a, b in zip(stages, stages[1:]))
    # each stage attacks only survivors: fewer model passes than the independent cells
    assert int(row["backward_passes"]) < sum(int(c["backward_passes"]) for c in cells)
    fooled_by = _manifest(env, row)["per_sample"]["fooled_by"]
    assert {f for f in fooled_by if f} <= {"s_weak", "s_pgd", "s_cw"}
    assert sum(bool(f) for f in fooled_by) == int(row["n_fooled"])
    # one stage row per stage, with its counts
    stage_rows = _stage_rows(env.store.root)
    assert [(r["attack"], int(r["given"]), int(r["fooled"])) for r in stage_rows] == \
        [(s["attack"], s["given"], s["fooled"]) for s in stages]
    # re-running skips the finished suite
    assert run_suite(env, "suite_net", "s3", "mnist", "smoke", 0, N_TEST)["timestamp"] == row["timestamp"]


def test_cost_order_runs_measured_attacks_cheapest_first_then_the_unmeasured_as_listed(suite_config, data_root,
                                                                                       tmp_path):
    """order = "cost" (the default): the median model passes per attacked point of each attack's finished rows
    (any defense; the clean pass not counted), cheapest first; an attack with no row goes after them."""
    from bench.suite import stage_order
    from synthetic_results import cell

    env = Env.create(config=suite_config, data_root=data_root, device="cpu", results_dir=tmp_path)
    assert stage_order(env, "s_cost", "mnist", "smoke")[0] == ["s_cw", "s_pgd", "s_weak"]  # nothing measured
    n, correct = 100, [True] * 80 + [False] * 20  # 80 points attacked
    for attack, defense, passes in [("s_cw", "a", (100 + 80 * 12, 80 * 12)),  # 24 per point
                                    ("s_cw", "b", (100 + 80 * 2, 80 * 2)),  # 4
                                    ("s_cw", "c", (100 + 80 * 3, 80 * 3)),  # 6: the median of s_cw's is 6
                                    ("s_pgd", "a", (100 + 80 * 1, 80 * 1))]:  # 2
        row, manifest = cell(defense, attack, correct, [False] * n, dataset="mnist", profile="smoke", passes=passes)
        env.store.append(row, manifest)
    other, m = cell("a", "s_weak", correct, [False] * n, dataset="mnist", profile="quick", passes=(180, 0))
    env.store.append(other, m)  # another profile's row measures nothing here
    order, note = stage_order(env, "s_cost", "mnist", "smoke")
    assert order == ["s_pgd", "s_cw", "s_weak"], note
    assert note == "by measured passes per point: s_pgd 2, s_cw 6, s_weak (not measured)"


def test_appended_attack_reuses_the_earlier_stages(suite_env, tmp_path):
    env = Env(suite_env.cfg, suite_env.data_root, suite_env.cache, ResultsStore(tmp_path), suite_env.device)
    short = run_suite(env, "suite_net", "s2", "mnist", "smoke", 0, N_TEST)
    assert len(_stage_rows(tmp_path)) == 2
    long = run_suite(env, "suite_net", "s3", "mnist", "smoke", 0, N_TEST)
    stages = _manifest(env, long)["suite"]["stages"]
    assert [s["reused"] for s in stages] == [True, True, False]
    assert [r["attack"] for r in _stage_rows(tmp_path)] == ["s_weak", "s_pgd", "s_cw"]  # only the new one ran
    assert int(long["n_fooled"]) >= int(short["n_fooled"])


def test_perf_suite_with_a_transfer_stage_at_the_suites_budget(suite_config, data_root, tmp_path):
    """`bench perf-suite`'s comparison on a suite whose last stage is a transfer attack: its threat model is the
    surrogate-side entry's moved by the transfer's overrides (pgd_transfer attacks 0.3 on MNIST; here 0.1, the
    suite's), known before it runs, so the suite accepts it; the numbers carry each cell's flags."""
    from bench.commands.perf_suite import compare
    from bench.report.tables import Results

    path = tmp_path / "bench.toml"
    path.write_text(suite_config.read_text() + "\n" + tiny_natural("suite_sur", n_train=200) + """
[attacks.s_transfer]
plugin = "transfer"
surrogate = "suite_sur"
norm = "linf"
eps = 0.1
[suites.s_t]
norm = "linf"
attacks = ["s_weak", "s_pgd", "s_transfer"]
order = "listed"
""")
    env = Env.create(config=path, data_root=data_root, device="cpu", results_dir=tmp_path / "results")
    stage = env.cfg.attack_instance("s_transfer", "mnist", "smoke")
    assert (stage.norm, stage.eps) == ("linf", pytest.approx(0.1))
    out = compare(env, "suite_net", "s_t", "mnist", "smoke", 0, 60, cells_dir=tmp_path / "cells")
    kept = Results.load(tmp_path / "cells")  # --cells-dir keeps the timed cells as an ordinary results folder
    assert sorted(r["attack"] for r in kept.rows) == ["s_pgd", "s_transfer", "s_weak"]
    assert out["order"] == ["s_weak", "s_pgd", "s_transfer"] and out["eps"] == pytest.approx(0.1)
    assert set(out["cells"]) == {"s_weak", "s_pgd", "s_transfer"}
    assert all(isinstance(c["flags"], list) for c in out["cells"].values()) and isinstance(out["suite_flags"], list)
    # the cells compared as the leaderboards do: on this honest network the transfer cell beats no gradient cell
    assert out["cells_cross_checks"]["black_box"] == "pass", out["cells_cross_flags"]
    # the transfer stage is given what PGD left and ran at the suite's budget (its points pass the budget check)
    last = out["stages"][-1]
    assert last["attack"] == "s_transfer" and last["given"] == out["stages"][1]["robust_after"]
    # the deterministic PGD-engine stages agree per sample with their cells; the transfer's surrogate-side random
    # starts are drawn per batch, so the whole worst case agrees only in distribution
    assert out["worst_case_suite"] <= out["cells"]["s_pgd"]["robust_acc"] + 1e-6  # rows keep 6 digits


def test_suite_configuration_errors_name_the_bad_value(suite_config, tmp_path, data_root):
    bad = tmp_path / "bench.toml"
    bad.write_text(suite_config.read_text() + '[suites.mixed]\nnorm = "linf"\nattacks = ["s_weak", "s_pgd_other_eps"]\n')
    with pytest.raises(ConfigError, match=r"s_pgd_other_eps \(eps 0\.2\)"):
        Env.create(config=bad, data_root=data_root, device="cpu", results_dir=tmp_path / "r")
    bad.write_text(suite_config.read_text() + '[suites.wrong_norm]\nnorm = "l2"\nattacks = ["s_weak"]\n')
    with pytest.raises(ConfigError, match="its attack 's_weak' attacks in linf"):
        Env.create(config=bad, data_root=data_root, device="cpu", results_dir=tmp_path / "r")
    bad.write_text(suite_config.read_text() + '[matrices.m]\ndatasets = ["mnist"]\ndefenses = ["natural"]\n'
                                              'suites = ["nope"]\n')
    with pytest.raises(ConfigError, match="Unknown suite in matrices.m 'nope'"):
        Env.create(config=bad, data_root=data_root, device="cpu", results_dir=tmp_path / "r")
    env = Env.create(config=suite_config, data_root=data_root, device="cpu", results_dir=tmp_path / "r")
    with pytest.raises(BenchError, match="Unknown suite 'nope'"):
        plan_suite(env, "suite_net", "nope", "mnist", "smoke", 0)


def _stage_rows(results: Path) -> list[dict]:
    import csv

    path = results / "suite_stages.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def _env_vars(pause: str | None = None) -> dict:
    env = {**os.environ, "BENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))}
    env.pop("BENCH_TEST_PAUSE", None)
    if pause:
        env["BENCH_TEST_PAUSE"] = pause
    return env


@pytest.mark.slow
@pytest.mark.ci
def test_kill_mid_suite_resumes_at_the_stage_in_flight(suite_env, suite_config, data_root, tmp_path):
    results = tmp_path / "results"
    args = [sys.executable, "-m", "bench.cli", "run", "--defense", "suite_net", "--suite", "s3", "--dataset",
            "mnist", "--profile", "smoke", "--n-test", str(N_TEST), "--config", str(suite_config), "--data-root",
            str(data_root), "--results-dir", str(results), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env_vars("call bench.suite._run_stage 2"))  # stage 1 saved, stage 2 starting
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("PAUSED"):
            break
    assert seen and seen[-1].startswith("PAUSED"), "".join(seen)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((results / "suites").glob("*.json"))) == 1 and len(_stage_rows(results)) == 1
    assert not ResultsStore(results).rows()
    done = subprocess.run(args, capture_output=True, text=True, env=_env_vars(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stage 1/3 s_weak" in done.stdout + done.stderr and "(saved earlier)" in done.stdout + done.stderr
    rows = ResultsStore(results).rows()
    assert len(rows) == 1
    stages = json.loads((results / "runs" / f"{rows[0]['cell']}.json").read_text())["suite"]["stages"]
    assert [s["reused"] for s in stages] == [True, False, False]
    assert [r["attack"] for r in _stage_rows(results)] == ["s_weak", "s_pgd", "s_cw"]  # stage 1 ran once
    # the resumed suite equals an uninterrupted one (same points, same per-point seeds, same checkpoint)
    ref = run_suite(suite_env, "suite_net", "s3", "mnist", "smoke", 0, N_TEST)
    assert json.loads((results / "runs" / f"{rows[0]['cell']}.json").read_text())["per_sample"]["fooled"] == \
        _manifest(suite_env, ref)["per_sample"]["fooled"]


@pytest.mark.slow
@pytest.mark.ci
def test_matrix_with_a_suite_runs_it_on_the_scheduler_after_its_training(suite_config, data_root, tmp_path):
    config = tmp_path / "bench.toml"
    config.write_text(suite_config.read_text() + '[matrices.with_suite]\nprofile = "smoke"\ndatasets = ["mnist"]\n'
                                                 'defenses = ["suite_net"]\nattacks = ["s_weak"]\nsuites = ["s2"]\n')
    results = tmp_path / "results"
    args = [sys.executable, "-m", "bench.cli", "run", "--matrix", "with_suite", "--n-test", str(N_TEST), "--config",
            str(config), "--data-root", str(data_root), "--results-dir", str(results), "--devices", "cpu", "--plain"]
    done = subprocess.run(args, capture_output=True, text=True, env=_env_vars(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ResultsStore(results).rows()
    assert sorted(r["attack"] for r in rows) == ["s_weak", "suite:s2"] and all(r["status"] == "ok" for r in rows)
    assert [r["attack"] for r in _stage_rows(results)] == ["s_weak", "s_pgd"]
    again = subprocess.run(args, capture_output=True, text=True, env=_env_vars(), timeout=600)
    assert again.returncode == 0 and "2 cells (2 finished earlier)" in again.stdout + again.stderr
    assert len(ResultsStore(results).rows()) == 2


@pytest.mark.parametrize("args,message", [
    (["--suite", "nope"], "Unknown suite 'nope' (from "),
    (["--suite", "linf-2", "--dataset", "mnist"], "suite 'linf-2' is not for mnist: its datasets are cifar10"),
])
def test_bad_suite_on_the_command_line_is_one_clear_error(args, message, data_root, tmp_path):
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--defense", "natural", *args, "--config",
                           str(REPO / "bench.toml"), "--data-root", str(data_root), "--results-dir", str(results)],
                          capture_output=True, text=True, env=_env_vars(), timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (results / "results.csv").exists() and not (results / "suites").exists()
