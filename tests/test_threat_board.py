"""Per-threat-model leaderboards (bench/report/threat_board.py): the worst case of a threat model uses only its attacks,
rows are sorted by it, cells of different n are combined on their common test points, exports are numeric."""
import csv
import json

import pytest

from bench.report import threat_board
from bench.data import subset_indices
from bench.report.tables import Results
from synthetic_results import EPS8, cell, check, fooling, write

N = 40


def _results(tmp_path, cells):
    store = write(tmp_path, cells)
    return Results(store.rows(), store.manifest_dir)


def test_worst_case_is_per_threat_model_and_rows_are_sorted(tmp_path):
    ok = [True] * N
    cells = [
        # robust: fooled 10 by PGD, 12 by CW (6 in common) at Linf 8/255; PGD-L1 fools 35 (another threat model)
        cell("robust", "pgd_linf", ok, fooling(N, range(10))),
        cell("robust", "cw_linf", ok, fooling(N, range(4, 16))),
        cell("robust", "pgd_l1", ok, fooling(N, range(35)), norm="l1", eps="30"),
        cell("robust", "pgd_l1_dense", ok, fooling(N, range(30)), norm="l1", eps="30.0"),
        cell("weak", "pgd_linf", ok, fooling(N, range(30))),
        cell("weak", "cw_linf", ok, fooling(N, range(31))),
    ]
    found = threat_board.boards(_results(tmp_path, cells), "cifar10", "quick")
    assert set(found) == {("linf", float(f"{float(EPS8):.6g}")), ("l1", 30.0)}  # '30' and '30.0': one threat model
    entries, _, _ = found[("linf", float(f"{float(EPS8):.6g}"))]
    assert [e.defense for e in entries] == ["robust", "weak"]  # best first
    robust = entries[0]
    assert (robust.worst.k, robust.worst.n) == (N - 16, N)  # union of 0..9 and 4..15, no L1 attack in it
    assert robust.worst.acc <= min(a.score.acc for a in robust.attacks) and robust.per_sample
    assert {a.attack for a in robust.attacks} == {"pgd_linf", "cw_linf"}
    l1, _, _ = found[("l1", 30.0)]
    assert (l1[0].worst.k, {a.attack for a in l1[0].attacks}) == (N - 35, {"pgd_l1", "pgd_l1_dense"})


def test_cells_of_different_n_combine_on_their_common_test_points(tmp_path):
    big, small = 60, 30
    idx_big = subset_indices(10000, big, 0, "cifar10/test").tolist()
    idx_small = subset_indices(10000, small, 0, "cifar10/test").tolist()
    assert set(idx_small) <= set(idx_big)
    # attack A (n = 60) fools the points at big-subset positions 0..19; B (n = 30) fools small positions 0..4
    fooled_a = fooling(big, range(20))
    fooled_b = fooling(small, range(5))
    cells = [cell("d", "pgd_linf", [True] * big, fooled_a), cell("d", "cw_linf", [True] * small, fooled_b)]
    (entries, _, _), = threat_board.boards(_results(tmp_path, cells), "cifar10", "quick").values()
    (e,) = entries
    a_fooled = {i for i, f in zip(idx_big, fooled_a) if f}
    b_fooled = {i for i, f in zip(idx_small, fooled_b) if f}
    expect = sum(1 for i in idx_small if i not in a_fooled and i not in b_fooled)
    assert (e.worst.k, e.worst.n, e.common) == (expect, small, small)


def test_a_failed_check_makes_the_worst_case_unreliable_and_exports_are_numbers(tmp_path):
    import pandas as pd  # a test dependency (pyproject [test]): never skipped
    ok = [True] * N
    cells = [cell("masked", "pgd_linf", ok, fooling(N, range(2)),
                  checks={"gradient_health": check("fail", "zero gradients", "all dead", 0.9, 0.2)}),
             cell("masked", "transfer", ok, fooling(N, range(38))),
             cell("honest", "pgd_linf", ok, fooling(N, range(20)))]
    results = _results(tmp_path, cells)
    index = threat_board.write(results, "cifar10", "quick", tmp_path)
    folder = index.parent
    (md,) = [p for p in folder.glob("*.md") if p.name != "index.md"]
    text = md.read_text()
    assert "(unreliable)" in text and "⚠ fail" in text and text.index("| honest") < text.index("| masked")
    assert len(text.splitlines()[2].split("|")) - 2 <= 12  # at most 12 columns
    board = pd.read_csv(md.with_suffix(".csv"))
    for col in ("clean_acc", "robust_acc", "ci_low", "ci_high", "eps", "attack_s"):
        assert pd.api.types.is_float_dtype(board[col]), (col, board[col].dtype)
    for col in ("rank", "robust_k", "robust_n", "clean_k", "clean_n", "unreliable", "forward_passes"):
        assert pd.api.types.is_integer_dtype(board[col]), (col, board[col].dtype)
    assert list(board["defense"]) == ["honest", "masked"] and list(board["unreliable"]) == [0, 1]
    per_attack = pd.read_csv(folder / f"{md.stem}-attacks.csv")
    assert pd.api.types.is_float_dtype(per_attack["robust_acc"]) and len(per_attack) == 3
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["defenses"][1]["worst"]["k"] == N - 38 and data["defenses"][1]["unreliable"] is True
    assert "[Linf 8/255](linf-8_255.md)" in index.read_text()


def test_committed_quick_snapshot_per_threat_model(tmp_path):
    """results/measured/quick.csv: pgd_at's Linf 8/255 worst case is at most its pgd_linf and cw_linf cells and
    comes from Linf 8/255 attacks only (the mixed leaderboard's 'worst case' took PGD-L1 at eps 30)."""
    from pathlib import Path


    snapshot = Path(__file__).resolve().parents[1] / "results" / "measured" / "quick.csv"
    with open(snapshot, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    found = threat_board.boards(Results(rows, None), "cifar10", "quick")
    linf8 = ("linf", float(f"{8 / 255:.6g}"))
    entries, _, _ = found[linf8]
    (pgd_at,) = [e for e in entries if e.defense == "pgd_at"]
    cells = {r["attack"]: float(r["robust_acc"]) for r in rows
             if r["defense"] == "pgd_at" and r["dataset"] == "cifar10" and r["status"] == "ok"}
    assert pgd_at.worst.acc <= min(cells["pgd_linf"], cells["cw_linf"]) + 1e-9
    used = {a.attack for a in pgd_at.attacks}
    assert used and all(threat_board.threat_model(r) == linf8 for r in rows
                        if r["defense"] == "pgd_at" and r["dataset"] == "cifar10" and r["attack"] in used)
    assert not any(a.startswith(("pgd_l1", "pgd_l2")) for a in used)
    worst = [e.worst.acc for e in entries]
    assert worst == sorted(worst, reverse=True)


TF32 = ("GPU run with cuDNN TF32 convolutions (before bench.exact, 50cb191); code = tree fd4b2301fb35, the copied "
        ".git named 09e2e402ffb7-dirty")


def test_footnotes_say_what_a_reader_needs_and_provenance_is_one_block(tmp_path):
    """A warning's reason stays a footnote (once, naming its cells); the code that made the rows (git SHAs, a copied
    .git's name), versions, devices, checkpoints, training flags and dates go to one provenance block per table."""
    ok = [True] * N
    cells = [cell("a", "pgd_linf", ok, fooling(N, range(5)), warnings=TF32, git_sha="abc123def456"),
             cell("a", "cw_linf", ok, fooling(N, range(6)), warnings=TF32, git_sha="fedcba654321-dirty",
                  flags={"dictionary": "78d0adc4b6477498"}, timestamp="2026-01-03T00:00:00+00:00"),
             cell("b", "pgd_linf", ok, fooling(N, range(9)), warnings=TF32,
                  checks={"gradient_health": check("warn", "few zero gradients", "3 % zero", 0.03, 0.02)})]
    results = _results(tmp_path, cells)
    index = threat_board.write(results, "cifar10", "quick", tmp_path)
    text = (index.parent / "linf-8_255.md").read_text()
    body, _, block = text.partition("Provenance:")
    assert block and "Provenance:" not in block  # one block
    for needle in ("abc123def456", "fedcba654321-dirty", "the copied .git named 09e2e402ffb7-dirty", "cpu:test",
                   "2026-01-01 to 2026-01-03", "78d0adc4b6477498", "a ckpt"):
        assert needle in block and needle not in body, needle
    notes = [line for line in body.splitlines() if line.startswith("[")]
    # the TF32 reason once, naming both defenses' cells; the weak check; nothing about hashes
    assert sum("GPU run with cuDNN TF32 convolutions (before bench.exact, 50cb191)" in n for n in notes) == 1
    assert any("a × cw_linf, pgd_linf; b × pgd_linf" in n for n in notes)
    assert any("few zero gradients" in n for n in notes) and len(notes) == 2
    assert "device" not in text.splitlines()[2]  # provenance, not a column
    # the HTML page shows the same footnotes and the same block
    from bench.report import html_board

    page = html_board.write(results, tmp_path / "leaderboard.html").read_text()
    assert page.count('<details class="provenance">') == 1 and "the copied .git named" in page
    assert "a × cw_linf, pgd_linf; b × pgd_linf" in page


ROBUSTBENCH_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc")  # every model_info card's


def test_model_cards_in_robustbench_format_match_the_leaderboard(tmp_path):
    """model_info/<threat model>/<defense>.json: the fields RobustBench's cards have and its leaderboard code reads
    (template.py sorts by float(autoattack_acc); leaderboard.html.j2 shows link, name, footnote, clean_acc, the
    accuracy, external, flags, additional_data, architecture, venue), consistent with <tm>.csv."""
    import pandas as pd  # a test dependency (pyproject [test]): never skipped
    ok = [True] * N
    sparse = cell("sparse", "pgd_linf", ok, fooling(N, range(20)))
    sparse[1]["defense_entry"] = {"name": "sparse", "plugin": "sparse", "params": {"arch": "resnet32", "ensemble": 10}}
    natural = cell("natural", "pgd_linf", ok, fooling(N, range(N - 1)))
    natural[1]["defense_entry"] = {"name": "natural", "plugin": "natural", "params": {"arch": "auto"}}
    # a run whose own config resolved "auto" to another network records it; the card shows that, not the default
    other = cell("other_config", "pgd_linf", ok, fooling(N, range(5)))
    other[1].update(defense_entry={"name": "other_config", "plugin": "natural", "params": {"arch": "auto"}},
                    architecture="wrn28_10")
    cells = [natural, other, cell("natural", "cw_linf", ok, fooling(N, range(N))), sparse,
             cell("masked", "pgd_linf", ok, fooling(N, range(2)),
                  checks={"gradient_health": check("fail", "zero gradients", "all dead", 0.9, 0.2)})]
    index = threat_board.write(_results(tmp_path, cells), "cifar10", "quick", tmp_path)
    board = pd.read_csv(index.parent / "linf-8_255.csv")
    folder = index.parent / threat_board.MODEL_INFO / "linf-8_255"
    cards = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert sorted(cards) == sorted(board["defense"])  # one card per defense of the threat model
    for card in cards.values():
        for f in ROBUSTBENCH_FIELDS + ("footnote", "unreliable", "flags"):
            assert f in card, f
        assert card["dataset"] == "cifar10" and card["eps"] == "8/255" and card["threat_model"] == "Linf"
        assert isinstance(card["clean_acc"], str) and isinstance(card["autoattack_acc"], str)
    # RobustBench's leaderboard order (template.py: sorted by float(acc field), best first) is bench's rank order
    ranked = sorted(cards.values(), key=lambda c: float(c["autoattack_acc"]), reverse=True)
    assert [c["name"] for c in ranked] == list(board["defense"])
    for _, r in board.iterrows():
        c = cards[r["defense"]]
        assert c["clean_acc"] == f"{100 * r['clean_acc']:.2f}" and c["autoattack_acc"] == f"{100 * r['robust_acc']:.2f}"
        assert c["unreliable"] == bool(r["unreliable"]) and c["bench"]["rank"] == r["rank"]
        assert (c["bench"]["worst_case"]["k"], c["bench"]["worst_case"]["n"]) == (r["robust_k"], r["robust_n"])
    assert cards["natural"]["autoattack_acc"] == "0.00" and "cw_linf, pgd_linf" in cards["natural"]["footnote"]
    assert cards["natural"]["architecture"] == "resnet32"  # "auto" in a manifest without it: bench.toml's default
    assert cards["other_config"]["architecture"] == "wrn28_10"
    assert cards["natural"]["number_forward_passes"] == 1 and cards["sparse"]["number_forward_passes"] == 10
    assert cards["masked"]["unreliable"] is True
    assert cards["masked"]["flags"] == ["pgd_linf: fail: zero gradients (gradient_health)"]
    assert "model_info/<threat model>/<defense>.json" in index.read_text()


def test_a_defense_gone_from_the_rows_leaves_no_stale_card(tmp_path):
    ok = [True] * N
    results = _results(tmp_path, [cell("a", "pgd_linf", ok, fooling(N, range(3))),
                                  cell("b", "pgd_l2", ok, fooling(N, range(3)), norm="l2", eps="0.5")])
    folder = threat_board.write(results, "cifar10", "quick", tmp_path).parent
    assert (folder / "l2-0.5.md").exists() and (folder / threat_board.MODEL_INFO / "l2-0.5" / "b.json").exists()
    only_a = Results([r for r in results.rows if r["defense"] == "a"], results.runs_dir)
    threat_board.write(only_a, "cifar10", "quick", tmp_path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "index.md", "linf-8_255-attacks.csv", "linf-8_255.csv", "linf-8_255.json", "linf-8_255.md",
        "model_info/linf-8_255/a.json"]
