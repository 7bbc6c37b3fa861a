"""Checks across the cells of one defense at one threat model (bench/verdicts/cross_cell.py), from per-sample
verdicts only: a black-box or single-step cell fooling points every iterative gradient cell left robust fails the
check and makes that threat model's worst case unreliable; honest differences within the noise do not."""
import json

from bench.report import threat_board
from bench.verdicts.cross_cell import cross_checks
from bench.report.tables import Results, leaderboard
from synthetic_results import BLACK, SINGLE, WHITE, cell, fooling, write

N = 100
OK = [True] * N


def _results(tmp_path, cells):
    store = write(tmp_path, cells)
    return Results(store.rows(), store.manifest_dir)


def _checks(tmp_path, cells):
    results = _results(tmp_path, cells)
    return cross_checks(results, "cifar10", results.rows)


def test_a_transfer_that_fools_what_every_gradient_attack_left_fails(tmp_path):
    checks = _checks(tmp_path, [
        cell("masked", "pgd_linf", OK, fooling(N, range(10)), traits=WHITE),
        cell("masked", "cw_linf", OK, fooling(N, range(5, 15)), traits=WHITE),
        cell("masked", "transfer", OK, fooling(N, range(60)), traits=BLACK)])
    assert set(checks) == {"black_box"}
    c = checks["black_box"]
    assert c["verdict"] == "fail" and c["n"] == N
    assert "transfer fools 45 of the 85 points" in c["reason"] and "of 100 shared (reverse 0)" in c["reason"]
    assert "cw_linf, pgd_linf" in c["reason"]


def test_honest_black_box_and_single_step_cells_pass(tmp_path):
    """Weaker black-box / FGSM cells, and ones that fool a few points PGD missed (within the noise), pass."""
    checks = _checks(tmp_path, [
        cell("honest", "pgd_linf", OK, fooling(N, range(50)), traits=WHITE),
        # 3 points PGD left, 20 the other way round: not stronger
        cell("honest", "transfer", OK, fooling(N, [*range(30), 60, 61, 62]), traits=BLACK),
        # 2 points beyond PGD's and none the other way: 2 % of the points is not more than min_points
        cell("honest", "square", OK, fooling(N, [*range(50), 70, 71]), traits=BLACK),
        cell("honest", "fgsm", OK, fooling(N, [*range(20), 80]), traits=SINGLE)])
    assert {k: c["verdict"] for k, c in checks.items()} == {"black_box": "pass", "single_step": "pass"}


def test_single_step_stronger_than_iterative_fails(tmp_path):
    checks = _checks(tmp_path, [cell("m", "pgd_linf", OK, fooling(N, range(5)), traits=WHITE),
                                cell("m", "fgsm", OK, fooling(N, range(40)), traits=SINGLE)])
    assert checks["single_step"]["verdict"] == "fail" and "fgsm fools 35" in checks["single_step"]["reason"]
    assert "black_box" not in checks  # no black-box cell ran: no verdict either way


def test_no_check_without_an_iterative_gradient_cell_or_with_a_cell_without_traits(tmp_path):
    assert _checks(tmp_path / "a", [cell("m", "transfer", OK, fooling(N, range(60)), traits=BLACK),
                                    cell("m", "fgsm", OK, fooling(N, range(5)), traits=SINGLE)]) == {}
    # a cell whose manifest predates attack_traits (here a strong BPDA cell) could be an iterative one: leaving its
    # points out of the white-box side would blame the transfer for what it found too, so no verdict at all
    mixed = [cell("m", "pgd_linf_bpda", OK, fooling(N, range(90))),
             cell("m", "pgd_linf", OK, fooling(N, range(5)), traits=WHITE),
             cell("m", "transfer", OK, fooling(N, range(60)), traits=BLACK)]
    assert _checks(tmp_path / "b", mixed) == {}
    assert _checks(tmp_path / "c", mixed[1:])["black_box"]["verdict"] == "fail"  # the same cells, all with traits


def test_each_cell_is_judged_on_the_points_it_shares_with_the_iterative_cells(tmp_path):
    """A black-box cell with its own small n_test (ZOO's) does not shrink FGSM's comparison with PGD on 1000
    points; its own comparison runs on its 50 points; a cell too small for any significant outcome gets none."""
    big = [True] * 1000
    checks = _checks(tmp_path / "a", [cell("m", "pgd_linf", big, fooling(1000, range(100)), traits=WHITE),
                                      cell("m", "fgsm", big, fooling(1000, range(160)), traits=SINGLE),
                                      cell("m", "zoo", [True] * 50, fooling(50, []), traits=BLACK)])
    assert checks["single_step"]["verdict"] == "fail" and checks["single_step"]["n"] == 1000
    assert "fgsm fools 60 of the 900 points" in checks["single_step"]["reason"]
    assert checks["black_box"] == {"verdict": "pass", "short": "ok", "n": 50, "reason": checks["black_box"]["reason"]}
    tiny = _checks(tmp_path / "b", [cell("m", "pgd_linf", big, fooling(1000, []), traits=WHITE),
                                    cell("m", "zoo", [True] * 3, fooling(3, range(3)), traits=BLACK)])
    assert tiny == {}  # 3 shared points: 0.5^3 > alpha, no outcome could be significant


def test_the_boards_mark_it_per_threat_model(tmp_path):
    """The Linf board of the masked defense says unreliable with the reason, its card lists the check, its JSON
    carries it; an L2 transfer does not count against the Linf cells; the mixed leaderboard marks it too."""
    cells = [cell("masked", "pgd_linf", OK, fooling(N, range(10)), traits=WHITE),
             cell("masked", "transfer", OK, fooling(N, range(60)), traits=BLACK),
             cell("masked", "pgd_l2", OK, fooling(N, range(40)), norm="l2", eps="0.5", traits=WHITE),
             cell("honest", "pgd_linf", OK, fooling(N, range(50)), traits=WHITE),
             cell("honest", "transfer", OK, fooling(N, range(30)), traits=BLACK),
             cell("honest", "transfer_l2", OK, fooling(N, range(90)), norm="l2", eps="0.25", traits=BLACK)]
    results = _results(tmp_path, cells)
    found = threat_board.boards(results, "cifar10", "quick")
    linf = next(entries for tm, (entries, _, _) in found.items() if tm[0] == "linf")
    by = {e.defense: e for e in linf}
    assert by["masked"].unreliable and by["masked"].cross["black_box"]["verdict"] == "fail"
    assert not by["honest"].unreliable and by["honest"].cross["black_box"]["verdict"] == "pass"
    assert all(not e.cross for tm, (entries, _, _) in found.items() if tm[0] == "l2" for e in entries)
    folder = threat_board.write(results, "cifar10", "quick", tmp_path).parent
    text = (folder / "linf-8_255.md").read_text()
    masked_line = next(line for line in text.splitlines() if line.split("|")[2:3] and line.split("|")[2].strip() == "masked")
    assert "(unreliable)" in masked_line and "⚠ fail" in masked_line
    assert "black-box stronger than white-box (black_box): transfer fools 50 of the 90 points" in text
    card = json.loads((folder / "model_info" / "linf-8_255" / "masked.json").read_text())
    assert card["unreliable"] and card["flags"] == ["across cells: fail: black-box stronger than white-box (black_box)"]
    data = json.loads((folder / "linf-8_255.json").read_text())
    assert [d.get("cross_checks", {}).get("black_box", {}).get("verdict") for d in data["defenses"]] == ["pass", "fail"]
    board = leaderboard(results, "cifar10", "quick")
    worst = {row[0]: row[board.header.index("worst case")] for row in board.rows}
    assert "(unreliable)" in worst["masked"] and "(unreliable)" not in worst["honest"]
    assert any("black_box at Linf 8/255: black-box stronger than white-box" in note for note in board.notes)


def test_a_failing_cell_of_another_n_marks_the_mixed_leaderboard_too(tmp_path):
    """The per-threat-model board and the mixed leaderboard agree: a ZOO cell on its own 100 points that fools what
    PGD left robust makes both worst cases unreliable, though the mixed one combines only the 1000-point cells."""
    big = [True] * 1000
    results = _results(tmp_path, [cell("m", "pgd_linf", big, fooling(1000, range(100)), traits=WHITE),
                                  cell("m", "zoo", [True] * 100, fooling(100, range(100)), traits=BLACK)])
    (entries, _, _), = threat_board.boards(results, "cifar10", "quick").values()
    assert entries[0].unreliable and entries[0].cross["black_box"]["n"] == 100
    board = leaderboard(results, "cifar10", "quick")
    assert "(unreliable)" in board.rows[0][board.header.index("worst case")]


def test_a_suite_row_neither_takes_part_nor_blocks_the_verdict(tmp_path):
    row, manifest = cell("m", "suite:linf", OK, fooling(N, range(70)))
    manifest["suite"] = {"name": "linf", "stages": []}
    checks = _checks(tmp_path, [cell("m", "pgd_linf", OK, fooling(N, range(10)), traits=WHITE),
                                cell("m", "transfer", OK, fooling(N, range(60)), traits=BLACK), (row, manifest)])
    assert checks["black_box"]["verdict"] == "fail" and "(pgd_linf)" in checks["black_box"]["reason"]


def test_a_suite_row_is_the_threat_models_worst_case_on_the_boards(tmp_path):
    """The leaderboards take a suite row (attack suite:NAME, per-sample verdicts in its manifest) into
    its threat model's worst case like any cell: here it fools 60 points, the independent PGD cell 20."""
    row, manifest = cell("m", "suite:linf", OK, fooling(N, range(60)))
    manifest["suite"] = {"name": "linf", "stages": []}
    results = _results(tmp_path, [cell("m", "pgd_linf", OK, fooling(N, range(20)), traits=WHITE), (row, manifest)])
    (entries, _, _), = threat_board.boards(results, "cifar10", "quick").values()
    assert (entries[0].worst.k, entries[0].worst.n) == (40, 100) and entries[0].strongest == "suite:linf"
    board = leaderboard(results, "cifar10", "quick")
    assert board.rows[0][board.header.index("worst case")].startswith("40.0")
