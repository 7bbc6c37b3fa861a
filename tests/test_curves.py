"""Robustness curves merged from every attack's per-sample evidence, attack optimality, and their CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.report.curves import evidence_of, merge, optimality, slice_curves, write_attack_board
from bench.report.plots import render_plots
from bench.report.tables import Results
from synthetic_results import cell, write

N = 8
CORRECT = [True] * 7 + [False]


def minnorm(attack, norms, fooled=None, **kw):
    fooled = fooled if fooled is not None else [True] * N
    return cell("natural", attack, CORRECT, fooled, min_norm=True, norms=norms, eps="", plugin="fmn",
                params={"norm": "linf", "steps": 100}, **kw)


def bounded(attack, eps, fooled, norms):
    return cell("natural", attack, CORRECT, fooled, eps=str(eps), norms=norms, plugin="pgd_linf",
                params={"eps": eps, "steps": 10})


BEST = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.0]


def curves_of(tmp_path, cells):
    write(tmp_path, cells)
    results = Results.load(tmp_path)
    return results, slice_curves(results.slice("cifar10", "quick", 0))["linf"][0]


def test_evidence_misclassified_is_zero_unfooled_is_unknown():
    row, man = minnorm("fmn_linf", BEST, fooled=[True] * 6 + [False, True])
    e = evidence_of(row, man, "cifar10")
    assert e.norms[7] == 0.0  # misclassified before the attack
    assert np.isinf(e.norms[6])  # not fooled: nothing known
    assert e.norms[:6].tolist() == BEST[:6]


def test_fixed_eps_cell_caps_fooled_points_and_never_raises_a_norm(tmp_path):
    # FMN found 0.07 for point 6; PGD at 0.03 fooled points 5 and 6 (within its budget) and left 0..4 robust
    pgd_norms = [0.0, 0.0, 0.0, 0.0, 0.0, 0.029, 0.03, 0.0]
    results, curve = curves_of(tmp_path, [minnorm("fmn_linf", BEST),
                                          bounded("pgd_linf", 0.03, [False] * 5 + [True, True, False], pgd_norms)])
    expected = np.array(BEST)
    expected[5], expected[6] = 0.029, 0.03  # lowered by the fixed-eps evidence
    assert np.allclose(curve.best, expected)
    fmn = next(e for e in curve.attacks if e.attack == "fmn_linf")
    assert (curve.best <= fmn.norms).all()  # merging never raises a point's norm
    # points robust at eps under PGD kept their FMN norms (0.01 .. 0.04 < 0.03 and above): nothing learned
    assert np.allclose(curve.best[:5], BEST[:5])
    assert curve.accuracy(0.0) == 7 / 8 and curve.accuracy(0.03) == 2 / 8


def test_two_fixed_eps_cells_alone_make_a_curve_capped_at_their_budgets(tmp_path):
    a = bounded("pgd_linf_eps2", 2 / 255, [True, True] + [False] * 6, [0.007] * 2 + [0.0] * 6)
    b = bounded("pgd_linf", 8 / 255, [True] * 5 + [False] * 3, [0.007] * 2 + [0.03] * 3 + [0.0] * 3)
    _, curve = curves_of(tmp_path, [a, b])
    assert np.allclose(curve.best[:5], [0.007, 0.007, 0.03, 0.03, 0.03])
    assert np.isinf(curve.best[5:7]).all() and curve.best[7] == 0


def test_weakened_attack_is_less_optimal(tmp_path):
    strong = minnorm("fmn_linf", BEST)
    weak = minnorm("fmn_linf_weak", [2 * v for v in BEST[:5]] + [0.06, 0.07, 0.0],
                   fooled=[True] * 5 + [False, True, True])
    _, curve = curves_of(tmp_path, [strong, weak])
    score = {e.attack: optimality(curve, e) for e in curve.attacks}
    assert score["fmn_linf"] == 1.0
    assert score["fmn_linf_weak"] < 0.8, score


def test_an_attack_beaten_only_at_a_fixed_eps_cap_is_less_optimal(tmp_path):
    # PGD at 0.03 fooled points 4-6; FMN found 0.05-0.07 there (above the cap) and never fooled point 3, which PGD
    # fooled too. The best curve's largest finite norm is then the cap itself: an area stopping there would see no
    # difference and score FMN 1.0.
    fmn = minnorm("fmn_linf", [0.01, 0.02, 0.025, 0.0, 0.05, 0.06, 0.07, 0.0],
                  fooled=[True, True, True, False, True, True, True, True])
    pgd = bounded("pgd_linf", 0.03, [False] * 3 + [True] * 4 + [False], [0.0] * 3 + [0.03] * 4 + [0.0])
    _, curve = curves_of(tmp_path, [fmn, pgd])
    assert curve.best.max() == 0.03
    score = optimality(curve, next(e for e in curve.attacks if e.attack == "fmn_linf"))
    assert score < 0.75, score


def test_points_are_matched_by_test_index_across_subset_sizes():
    from bench.report.curves import Evidence, point_indices

    big, small = point_indices("cifar10", 20, 0), point_indices("cifar10", 5, 0)
    assert set(small) <= set(big)
    a = Evidence("fmn", "linf", True, None, big, np.full(20, 0.5))
    b = Evidence("pgd", "linf", False, 0.03, small, np.full(5, 0.03))
    c = merge("natural", "linf", [a, b])
    assert c.n == 20 and (c.best == 0.03).sum() == 5 and (c.best == 0.5).sum() == 15


def test_plot_writes_the_curve_and_its_csv_and_the_attack_board(tmp_path):
    strong = minnorm("fmn_linf", BEST)
    weak = minnorm("fab_linf", [v * 1.5 for v in BEST])
    results, _ = curves_of(tmp_path, [strong, weak, bounded("pgd_linf", 0.03, [False] * 8, [0.0] * 8)])
    page, made, _ = render_plots(results, tmp_path / "out", "cifar10", "quick", kinds=["curve"])
    png = tmp_path / "out" / "plots" / "curve_linf_cifar10_quick_s0.png"
    assert png.exists() and png.with_suffix(".csv").exists()
    rows = png.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("defense,norm,eps,accuracy,ci_low,ci_high")
    assert rows[1].startswith("natural,linf,0,0.875")
    board = write_attack_board(results, "cifar10", "quick", None, tmp_path / "out").read_text()
    lines = [line for line in board.splitlines() if line.startswith("| fmn") or line.startswith("| fab")]
    assert lines[0].startswith("| fmn_linf | 1.000") and lines[1].startswith("| fab_linf | 0.667")  # 1 / 1.5: areas up to fab's largest norm


def _bench(*args, cwd):
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.slow
def test_cli_table_attacks_and_plot_curve(tmp_path):
    write(tmp_path, [minnorm("fmn_linf", BEST), minnorm("fab_linf", [v * 1.5 for v in BEST])])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = _bench("table", "--attacks", "--profile", "quick", "--dataset", "cifar10", "--results-dir", str(tmp_path),
               "--config", os.path.join(root, "bench.toml"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "| fmn_linf | 1.000" in r.stdout
    r = _bench("plot", "--kind", "curve", "--profile", "quick", "--dataset", "cifar10", "--results-dir",
               str(tmp_path), "--config", os.path.join(root, "bench.toml"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plots" / "curve_linf_cifar10_quick_s0.csv").exists()
    r = _bench("table", "--attacks", "--profile", "smoke", "--dataset", "cifar10", "--results-dir", str(tmp_path),
               "--config", os.path.join(root, "bench.toml"), cwd=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "minimum-norm" in r.stderr + r.stdout


def test_weakened_minimum_norm_attack_fails_regress(tmp_path):
    """The same FMN cell with norms 1.5x larger on 40 points (a weakened attack): bench regress flags the rise of
    its mean norm as a regression, beside its lower optimality."""
    from bench.report.regress import compare, snapshot

    rng = np.random.default_rng(0)
    norms = (0.01 + 0.02 * rng.random(40)).tolist()
    correct, fooled = [True] * 40, [True] * 40

    def records(name, scale):
        row = cell("natural", "fmn_linf", correct, fooled, min_norm=True, norms=[v * scale for v in norms], eps="",
                   plugin="fmn", params={"norm": "linf", "steps": 100})
        write(tmp_path / name, [row])
        return snapshot(Results.load(tmp_path / name), {"quick"})

    findings = compare(records("base", 1.0), records("weak", 1.5))
    assert [(f.metric, f.kind) for f in findings if f.regression] == [("mean_norm", "rise")]
    assert not [f for f in compare(records("base2", 1.0), records("same", 1.0)) if f.regression]


def test_leaderboards_show_the_median_minimal_norm_and_the_curve_only_with_minimum_norm_evidence(tmp_path):
    from bench.report import html_board, threat_board

    pgd = bounded("pgd_linf", 0.03, [False] * 5 + [True, True, False], [0.0] * 5 + [0.029, 0.03, 0.0])
    results, _ = curves_of(tmp_path, [minnorm("fmn_linf", BEST), pgd])
    entries, notes, sl = threat_board.boards(results, "cifar10", "quick")[("linf", 0.03)]
    # per point: 0.01 .. 0.05, 0.029, 0.03 (PGD's), 0 (misclassified): median (0.029 + 0.03) / 2
    assert entries[0].median_norm == pytest.approx(0.0295)
    md = threat_board.table(("linf", 0.03), entries, notes, sl).markdown()
    assert "median min norm" in md and " 7.52/255 " in md
    page = html_board.page({("cifar10", "quick"): threat_board.boards(results, "cifar10", "quick")})
    assert "median min norm" in page and "Robustness curve" in page and "accuracy vs Linf eps (n 8)" in page

    bare = tmp_path / "bare"  # the PGD cell alone: no curve, the table as it always was
    write(bare, [pgd])
    found = threat_board.boards(Results.load(bare), "cifar10", "quick")
    entries, notes, sl = found[("linf", 0.03)]
    assert entries[0].curve is None
    assert "median" not in threat_board.table(("linf", 0.03), entries, notes, sl).markdown()
    assert "median" not in (page := html_board.page({("cifar10", "quick"): found})) and "Robustness curve" not in page
