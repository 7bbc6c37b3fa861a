"""`bench regress`: planted regressions are flagged, sampling wobble is not, and the exit codes are 0 / 1 / 2."""
import csv
import math
import sys

import pytest

from bench.errors import BenchError
from bench.regress import BASELINE_COLUMNS, compare, read_baseline, run_regress, snapshot, two_proportion_p, welch_p
from bench.tables import Results
from synthetic_results import cell, fooling, write

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
    write(tmp_path / "later", [*_cells(), cell("natural", "cw_linf", CORRECT, [], status="failed",
                                               timestamp="2026-02-01T00:00:00+00:00")])
    later = snapshot(Results.load(tmp_path / "later"), {"quick"})
    found = compare(base, later)
    assert _regressions(found) == [("cw_linf", "failing", "status")]
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


def test_update_writes_a_baseline_and_run_regress_returns_exit_codes(tmp_path):
    write(tmp_path / "r", _cells())
    path = tmp_path / "baselines" / "quick.csv"
    with pytest.raises(BenchError, match="--update"):
        run_regress(Results.load(tmp_path / "r"), path, None)
    code, text = run_regress(Results.load(tmp_path / "r"), path, tmp_path / "r.md", known_profiles={"quick": 1},
                             update=True)
    assert code == 0 and "created" in text and path.exists()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == BASELINE_COLUMNS and len(rows) == 2 and rows[0]["n_robust"] in ("430", "450")
    code, text = run_regress(Results.load(tmp_path / "r"), path, tmp_path / "r.md")
    assert code == 0 and "No regression" in text
    write(tmp_path / "r", _cells(robust_pgd=350, timestamp="2026-03-01T00:00:00+00:00"))
    code, text = run_regress(Results.load(tmp_path / "r"), path, tmp_path / "r.md")
    assert code == 1 and "1 regression" in text and "natural × pgd_linf" in (tmp_path / "r.md").read_text()
    code, _ = run_regress(Results.load(tmp_path / "r"), path, None, update=True)
    assert code == 0 and {r["n_robust"] for r in read_baseline(path)} == {"350", "430"}
    path.write_text("dataset,defense\ncifar10,natural\n")
    with pytest.raises(BenchError, match="missing columns"):
        read_baseline(path)


def _main(monkeypatch, *args) -> int:
    from bench.cli import main

    monkeypatch.setattr(sys, "argv", ["bench", *args])
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    return 0


def test_cli_exit_codes_are_0_1_2(tmp_path, monkeypatch, capsys):
    write(tmp_path / "r", _cells(profile="smoke"))
    base = tmp_path / "smoke.csv"
    common = ["--baseline", str(base), "--results-dir", str(tmp_path / "r")]
    assert _main(monkeypatch, "regress", *common) == 2  # no baseline yet: an error, not a pass
    assert _main(monkeypatch, "regress", *common, "--update") == 0  # the file name says the profile
    assert _main(monkeypatch, "regress", *common) == 0
    write(tmp_path / "r", [_cells(profile="smoke", timestamp="2026-05-01T00:00:00+00:00")[0]])
    (tmp_path / "r" / "results.csv").write_text(
        "\n".join(l for l in (tmp_path / "r" / "results.csv").read_text().splitlines() if "cw_linf" not in l) + "\n")
    assert _main(monkeypatch, "regress", *common) == 1  # cw_linf disappeared
    assert "missing" in (tmp_path / "r" / "regress.md").read_text()
    assert _main(monkeypatch, "regress", *common, "--profile", "smok") == 2
