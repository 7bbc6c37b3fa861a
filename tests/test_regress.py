"""`bench regress`: planted regressions are flagged, sampling wobble is not; a baseline knows its matrix, profile,
seed and device kind; a damaged baseline is an error naming file and line; the exit codes are 0 / 1 / 2.
(tests/test_regress_planted.py plants a weaker attack and a weaker defense in real smoke runs.)"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_config
from bench.errors import BenchError
from bench.report.regress import (BASELINE_COLUMNS, compare, meta_path, read_baseline, run_regress, snapshot,
                           two_proportion_p, welch_p, write_from_results)
from bench.report.tables import Results
from synthetic_results import cell, fooling, write

BENCH = Path(sys.executable).with_name("bench")  # the installed console script: real exit codes, real click

N = 1000
CORRECT = [i >= 100 for i in range(N)]  # 90 % clean


def _cells(robust_pgd=450, robust_cw=430, clean=900, boundary_norms=None, **kw):
    """natural × pgd_linf / cw_linf at n = 1000 with the given robust counts (and a boundary cell if norms given)."""
    correct = [i >= N - clean for i in range(N)]
    out = [cell("natural", "pgd_linf", correct, fooling(N, range(N - clean, N - robust_pgd)), **kw),
           cell("natural", "cw_linf", correct, fooling(N, range(N - clean, N - robust_cw)), **kw)]
    if boundary_norms is not None:
        out.append(cell("natural", "boundary", correct, fooling(N, range(N - clean, N)), norm="l2", eps="",
                        min_norm=True, norms=boundary_norms, **kw))
    return out


def _records(tmp_path, name, **kw):
    write(tmp_path / name, _cells(**kw))
    return snapshot(Results.load(tmp_path / name), {"quick"})


def _regressions(findings):
    return [(f.key[2], f.kind, f.metric) for f in findings if f.regression]


def test_planted_ten_point_drop_on_n_1000_is_flagged(tmp_path):
    base = _records(tmp_path, "base")
    now = _records(tmp_path, "now", robust_pgd=350)  # 45.0 % -> 35.0 %
    assert _regressions(compare(base, now)) == [("pgd_linf", "drop", "robust_acc")]


def test_half_point_wobble_is_not_flagged(tmp_path):
    base = _records(tmp_path, "base")
    now = _records(tmp_path, "now", robust_pgd=445, robust_cw=435)  # -0.5 and +0.5 points
    assert _regressions(compare(base, now)) == []


def test_missing_and_newly_failing_cells_are_flagged(tmp_path):
    base = _records(tmp_path, "base")
    write(tmp_path / "now", [_cells()[0],
                             cell("natural", "pgd_l2", CORRECT, [], status="failed", warnings="OOM")])
    now = snapshot(Results.load(tmp_path / "now"), {"quick"})
    assert _regressions(compare(base, now)) == [("cw_linf", "missing", "")]
    failed_cw = cell("natural", "cw_linf", CORRECT, [], status="failed", timestamp="2026-02-01T00:00:00+00:00")
    write(tmp_path / "later", [_cells()[0], failed_cw])  # the cell's only attempt failed
    later = snapshot(Results.load(tmp_path / "later"), {"quick"})
    found = compare(base, later)
    assert _regressions(found) == [("cw_linf", "failing", "status")]
    # a failed retry after a finished row does not hide it (bench.store.CellRows): the finished row is compared
    write(tmp_path / "retried", [*_cells(), failed_cw])
    assert _regressions(compare(base, snapshot(Results.load(tmp_path / "retried"), {"quick"}))) == []
    assert [(f.key[2], f.kind) for f in compare(base, now) if not f.regression] == [("pgd_l2", "new")]


def test_a_rise_in_robust_accuracy_or_a_clean_drop_is_flagged_too(tmp_path):
    base = _records(tmp_path, "base")
    weaker_attack = _records(tmp_path, "rise", robust_cw=530)
    assert _regressions(compare(base, weaker_attack)) == [("cw_linf", "rise", "robust_acc")]
    worse_model = _records(tmp_path, "clean", clean=850, robust_pgd=450, robust_cw=430)
    assert ("pgd_linf", "drop", "clean_acc") in _regressions(compare(base, worse_model))


def test_min_change_guards_large_n_and_alpha_guards_small_n(tmp_path):
    base = _records(tmp_path, "base")
    now = _records(tmp_path, "now", robust_pgd=430)  # 2 points: p ~ 0.37 at n = 1000
    assert _regressions(compare(base, now)) == []
    assert _regressions(compare(base, now, alpha=0.5, min_change=0.01)) == [("pgd_linf", "drop", "robust_acc")]
    assert _regressions(compare(base, now, alpha=0.5, min_change=0.03)) == []


def test_minimum_norm_attacks_compare_mean_norm_with_its_spread(tmp_path):
    norms = [1.0 + 0.1 * math.sin(i) for i in range(N)]
    base = _records(tmp_path, "base", boundary_norms=norms)
    same = _records(tmp_path, "same", boundary_norms=[v * 1.01 for v in norms])
    assert _regressions(compare(base, same)) == []
    halved = _records(tmp_path, "halved", boundary_norms=[v * 0.5 for v in norms])
    assert _regressions(compare(base, halved)) == [("boundary", "drop", "mean_norm")]
    rec = next(r for r in base if r["attack"] == "boundary")
    assert float(rec["norm_std"]) == pytest.approx(0.1 * math.sqrt(0.5), rel=0.05)


def test_statistics_match_known_values():
    # 50 % vs 45 % at n = 1000 each: z = 0.05 / sqrt(0.475 * 0.525 * 0.002) = 2.2389
    assert two_proportion_p(500, 1000, 450, 1000) == pytest.approx(math.erfc(2.2389 / math.sqrt(2)), rel=1e-3)
    assert two_proportion_p(0, 100, 0, 100) == 1.0 and two_proportion_p(0, 100, 100, 100) < 1e-6
    assert welch_p(1.0, 0.1, 100, 1.0, 0.1, 100) == 1.0 and welch_p(1.0, 0.1, 100, 1.1, 0.1, 100) < 1e-6


# ------------------------------------------------------------------------ matrices, sidecars, devices, damage

MATRICES = """
[matrices.t]
profile = "smoke"
datasets = ["cifar10"]
defenses = ["natural"]
attacks = ["pgd_linf", "cw_linf"]

[matrices.t3]
profile = "smoke"
datasets = ["cifar10"]
defenses = ["natural"]
attacks = ["pgd_linf", "cw_linf", "fgsm"]
"""


@pytest.fixture
def cfg_path(config_copy):
    with open(config_copy, "a") as f:
        f.write(MATRICES)
    return config_copy


@pytest.fixture
def cfg(cfg_path):
    return load_config(cfg_path)  # once per test: loading validates every entry of bench.toml


def _smoke(robust_pgd=90, robust_cw=86, robust_fgsm=None, device=None, timestamp="2026-01-01T00:00:00+00:00"):
    """natural × pgd_linf / cw_linf (/ fgsm) at the smoke profile, n = 200 (the ci matrix's size)."""
    n, clean = 200, 180
    correct = [i >= n - clean for i in range(n)]
    out = [cell("natural", "pgd_linf", correct, fooling(n, range(n - clean, n - robust_pgd)), profile="smoke",
                timestamp=timestamp),
           cell("natural", "cw_linf", correct, fooling(n, range(n - clean, n - robust_cw)), profile="smoke",
                timestamp=timestamp)]
    if robust_fgsm is not None:
        out.append(cell("natural", "fgsm", correct, fooling(n, range(n - clean, n - robust_fgsm)), profile="smoke",
                        timestamp=timestamp))
    for row, _ in out:
        row["device"] = device or row["device"]
    return out


def _baseline(tmp_path, cfg, matrix="t", **kw) -> Path:
    write(tmp_path / "b", _smoke(**kw))
    path = tmp_path / "baselines" / f"{matrix}-smoke-cpu.csv"
    code, _ = write_from_results(Results.load(tmp_path / "b"), path, None, cfg, matrix)
    assert code == 0
    return path


def _compare(tmp_path, cfg, base, cells, **kw):
    write(tmp_path / "now", cells)
    return run_regress(Results.load(tmp_path / "now"), base, tmp_path / "now.md", cfg, **kw)


def test_a_baseline_records_its_matrix_profile_seed_device_kind_and_code_version(tmp_path, cfg):
    base = _baseline(tmp_path, cfg)
    meta = json.loads(meta_path(base).read_text())
    assert {k: meta[k] for k in ("matrix", "profile", "seed", "device_kind", "devices", "code_version", "cells")} == {
        "matrix": "t", "profile": "smoke", "seed": 0, "device_kind": "cpu", "devices": ["cpu:test"],
        "code_version": "abc123def456", "cells": 2}
    assert "bench run --matrix t" in meta["bootstrap"]
    with open(base) as f:
        assert list(next(csv.reader(f))) == BASELINE_COLUMNS
    code, text = _compare(tmp_path, cfg, base, _smoke())
    assert code == 0 and "No regression** in 2 compared cells" in text and "matrix t, profile smoke" in text


def test_only_the_matrix_that_ran_is_compared_and_other_baseline_cells_are_not_regressions(tmp_path, cfg):
    base = _baseline(tmp_path, cfg, matrix="t3", robust_fgsm=120)
    code, text = _compare(tmp_path, cfg, base, _smoke(), matrix="t")  # fgsm did not run: not asked for
    assert code == 0, text
    assert "not in this run" in text and "natural × fgsm" in text.split("not in this run")[1]


def test_a_missing_cell_of_the_matrix_is_a_regression(tmp_path, cfg):
    base = _baseline(tmp_path, cfg)
    code, text = _compare(tmp_path, cfg, base, _smoke()[:1])  # cw_linf never ran
    assert code == 1 and "| cifar10/smoke/seed 0: natural × cw_linf | missing |" in text


def test_writing_a_baseline_refuses_an_incomplete_run_and_a_name_that_hides_what_it_holds(tmp_path, cfg):
    write(tmp_path / "b", _smoke())
    results = Results.load(tmp_path / "b")
    with pytest.raises(BenchError, match="1 of the 3 cells of matrix t3.*fgsm.*bench run --matrix t3"):
        write_from_results(results, tmp_path / "t3-smoke-cpu.csv", None, cfg, "t3")
    with pytest.raises(BenchError, match="call it .*t-smoke-cpu.csv"):
        write_from_results(results, tmp_path / "smoke.csv", None, cfg, "t")
    with pytest.raises(BenchError, match="needs --matrix"):
        write_from_results(results, tmp_path / "t-smoke-cpu.csv", None, cfg)


def test_a_gpu_run_against_a_cpu_baseline_is_an_error_unless_allowed(tmp_path, cfg):
    base = _baseline(tmp_path, cfg)
    with pytest.raises(BenchError, match="measured on cuda .*for cpu.*--allow-device-change"):
        _compare(tmp_path, cfg, base, _smoke(device="cuda:NVIDIA H200"))
    code, text = _compare(tmp_path, cfg, base, _smoke(device="cuda:NVIDIA H200"), allow_device_change=True)
    assert code == 0 and "Device kind changed (cpu → cuda" in text


def test_the_matrix_tolerance_comes_from_bench_toml_and_the_command_line_overrides_it(tmp_path, cfg_path):
    with open(cfg_path, "a") as f:
        f.write("\n[regress.matrices.t]\nmin_change = 0.10\n")
    cfg = load_config(cfg_path)
    base = _baseline(tmp_path, cfg)
    drop = _smoke(robust_pgd=72)  # 45 % -> 36 %: p = 0.07 at n = 200, 9 points
    code, text = _compare(tmp_path, cfg, base, drop, alpha=0.1)
    assert code == 0 and "min_change 0.1 ([regress.matrices.t])" in text
    code, text = _compare(tmp_path, cfg, base, drop, alpha=0.1, min_change=0.05)
    assert code == 1 and "natural × pgd_linf | drop | robust_acc" in text
    with open(cfg_path, "a") as f:
        f.write("[regress.matrices.nope]\nmin_change = 0.1\n")
    with pytest.raises(BenchError, match="nope"):
        load_config(cfg_path)


def _damage(path: Path, how: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "torn":  # the write stopped in the middle of the last row
        path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    elif how == "short":  # a row lost its tail but kept a line end
        path.write_text("".join(lines[:-1]) + ",".join(lines[-1].split(",")[:9]) + "\n")
    elif how == "column":
        header = lines[0].rstrip("\n").split(",")
        i = header.index("n_robust")
        path.write_text("".join(",".join(c for j, c in enumerate(l.rstrip("\n").split(",")) if j != i) + "\n"
                                for l in lines))
    elif how == "number":
        header = lines[0].rstrip("\n").split(",")
        fields = lines[2].rstrip("\n").split(",")
        fields[header.index("robust_acc")] = "0.4x5"
        path.write_text("".join(lines[:2]) + ",".join(fields) + "\n")


@pytest.mark.parametrize("how, message", [
    ("torn", r"t-smoke-cpu.csv, line 3: the last row has no line end"),
    ("short", r"t-smoke-cpu.csv, line 3: 9 fields where the header has 21 \(a torn"),
    ("column", r"t-smoke-cpu.csv, line 1: missing columns n_robust"),
    ("number", r"t-smoke-cpu.csv, line 3: column robust_acc is '0.4x5', not a finite number"),
])
def test_a_damaged_baseline_is_an_error_naming_file_and_line_never_a_regression(tmp_path, cfg, how, message):
    base = _baseline(tmp_path, cfg)
    _damage(base, how)
    with pytest.raises(BenchError, match=message):
        _compare(tmp_path, cfg, base, _smoke())


def test_a_baseline_without_its_sidecar_or_out_of_step_with_it_is_an_error(tmp_path, cfg):
    base = _baseline(tmp_path, cfg)
    meta = json.loads(meta_path(base).read_text())
    meta_path(base).write_text(json.dumps({**meta, "cells": 3}))
    with pytest.raises(BenchError, match="says 3 cells but .* holds 2"):
        _compare(tmp_path, cfg, base, _smoke())
    meta_path(base).unlink()
    with pytest.raises(BenchError, match="no sidecar"):
        _compare(tmp_path, cfg, base, _smoke())


def _bench(*args) -> tuple[int, str]:
    p = subprocess.run([str(BENCH), *args], capture_output=True, text=True,
                       env={**os.environ, "BENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    return p.returncode, p.stdout + p.stderr


def test_cli_exit_codes_are_0_1_2_from_the_real_entry_point(tmp_path, cfg_path):
    write(tmp_path / "r", _smoke())
    base = tmp_path / "t-smoke-cpu.csv"
    common = ["regress", "--baseline", str(base), "--config", str(cfg_path), "--results-dir", str(tmp_path / "r")]
    code, out = _bench(*common)
    assert code == 2 and "not found" in out and "Traceback" not in out  # no baseline yet: an error, not a pass
    assert _bench(*common, "--matrix", "t", "--write-baseline")[0] == 0  # (exit 0 on a pass: .ci/run, every landing)
    write(tmp_path / "r", _smoke(robust_pgd=130, timestamp="2026-05-01T00:00:00+00:00"))  # a weaker attack: a rise
    code, out = _bench(*common)
    assert code == 1 and "| cifar10/smoke/seed 0: natural × pgd_linf | rise | robust_acc |" in out
    _damage(base, "torn")
    code, out = _bench(*common)
    assert code == 2 and "line 3" in out and "regression" not in out.lower() and "Traceback" not in out
