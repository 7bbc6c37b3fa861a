"""Per-cell check verdicts (the `checks` column, bench.verdicts) in the tables: ⚠ + a footnote on a warn/fail cell,
'(unreliable)' on a worst case that combines a failed check, nothing for pass / skip / rows without checks."""
import csv
import io
import json
import re
from pathlib import Path

import pytest

from bench.config import load_config
from bench.report.render import render
from bench.report.tables import Notes, Results, leaderboard, spec_table, worst_cell
from synthetic_results import check, cell, fooling, write

REPO = Path(__file__).resolve().parent.parent
N = 100
CORRECT = [i >= 10 for i in range(N)]  # 90 % clean
PGD, CW, WORST = "pgd_linf (Linf 8/255)", "cw_linf (Linf 8/255)", "worst case"

ZERO_GRAD = check("fail", "zero gradients", "input gradient of the CE loss (backward autograd) exactly zero, NaN/Inf "
                  "or vanishing on 77.6% of points at the clean point", 0.776, 0.2)
NOT_CONVERGED = check("warn", "not converged", "the running best loss of 40.0% of the 60 surviving points still rose",
                      0.4, 0.2)
HEALTHY = {"gradient_health": check("pass", "gradients ok", "healthy", 0.0, 0.02),
           "randomness": check("pass", "deterministic", "4 passes of the same batch agree", 0.0, 0.01),
           "silent_success": check("skip", "no verdict", "the attack's own verdict is not about this model")}


def _row_of(table, name):
    return dict(zip(table.header, next(r for r in table.rows if r[0].startswith(name))))


def _marks(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\[(\d+)\]", text)]


def _note(table, text: str) -> str:
    """The footnote a cell's first verdict mark points to."""
    return table.notes[_marks(text.split("⚠", 1)[1])[0] - 1]


def _board(tmp_path, *cells):
    write(tmp_path, cells)
    return leaderboard(Results.load(tmp_path), "cifar10", "quick")


def test_failed_check_marks_the_cell_and_makes_the_worst_case_unreliable(tmp_path):
    table = _board(tmp_path,
                   cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                        checks={**HEALTHY, "gradient_health": ZERO_GRAD}),
                   cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 50)), checks=HEALTHY))
    natural = _row_of(table, "natural")
    assert natural[PGD].startswith("70.0 ± ") and "⚠" in natural[PGD]
    assert "⚠" not in natural[CW] and not _marks(natural[CW])
    note = _note(table, natural[PGD])
    assert note.startswith("attack failed: zero gradients (gradient_health): input gradient of the CE loss")
    assert "77.6%" in note
    # the number stays (per sample over both attacks: 50 %), but it is not presented as a robustness number
    worst = natural[WORST]
    assert worst.startswith("50.0 ± ") and "(unreliable)" in worst and not worst.startswith("≤")
    why = table.notes[_marks(worst)[-1] - 1]
    assert why == "natural worst case unreliable: attack failed a check on pgd_linf (gradient_health: zero gradients)"
    assert len(table.notes) == 2


def test_warned_check_marks_the_cell_but_the_worst_case_stays_reliable(tmp_path):
    table = _board(tmp_path,
                   cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                        checks={**HEALTHY, "incomplete_optimization": NOT_CONVERGED}),
                   cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 50)), checks=HEALTHY))
    natural = _row_of(table, "natural")
    assert "⚠" in natural[PGD]
    assert _note(table, natural[PGD]).startswith("attack may be weak: not converged (incomplete_optimization): "
                                                 "the running best loss of 40.0%")
    assert re.fullmatch(r"50\.0 ± \d\.\d", natural[WORST]) and "unreliable" not in " ".join(table.notes)


@pytest.mark.parametrize("column", [None, "", "{}", json.dumps(HEALTHY),
                                    json.dumps({"gradient_health": check("skip", "no gradients", "gradient-free")}),
                                    "not json"], ids=["absent", "empty", "empty-json", "pass", "skip", "garbage"])
def test_pass_skip_and_rows_without_checks_show_no_marks(tmp_path, column):
    rows = [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30))),
            cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 50)))]
    for row, _ in rows:
        if column is None:  # a row from before the column existed
            del row["checks"]
        else:
            row["checks"] = column
    # as results.csv reads them back: every value a string
    table = leaderboard(Results([{k: str(v) for k, v in row.items()} for row, _ in rows]), "cifar10", "quick")
    natural = _row_of(table, "natural")
    assert all(re.fullmatch(r"70\.0 ± \d\.\d", natural[a]) for a in (PGD, CW))
    assert "⚠" not in "".join(natural.values()) and "unreliable" not in "".join(natural.values())
    assert not any("attack failed" in n or "attack may be weak" in n or "unreliable" in n for n in table.notes)


def test_cells_that_fail_for_the_same_reason_share_one_footnote(tmp_path):
    table = _board(tmp_path,
                   cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)), checks={"gradient_health": ZERO_GRAD}),
                   cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 50)), checks={"gradient_health": ZERO_GRAD}),
                   cell("other", "pgd_linf", CORRECT, fooling(N, range(10, 30)), checks={"gradient_health": ZERO_GRAD}),
                   cell("other", "cw_linf", CORRECT, fooling(N, range(10, 30)),
                        checks={"incomplete_optimization": NOT_CONVERGED}))
    natural, other = _row_of(table, "natural"), _row_of(table, "other")
    marks = {_marks(c.split("⚠")[1])[0] for c in (natural[PGD], natural[CW], other[PGD])}
    assert len(marks) == 1  # one footnote for the three cells with the same reason
    assert sum(n.startswith("attack failed: zero gradients") for n in table.notes) == 1
    assert sum(n.startswith("attack may be weak: not converged") for n in table.notes) == 1
    assert "(unreliable)" in natural[WORST] and "(unreliable)" in other[WORST]
    assert ("natural worst case unreliable: attack failed a check on cw_linf (gradient_health: zero gradients); "
            "pgd_linf (gradient_health: zero gradients)") in table.notes


def test_a_cell_with_warnings_and_checks_gets_one_mark_and_a_footnote_each(tmp_path):
    table = _board(tmp_path, cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                                  warnings="possible gradient masking",
                                  checks={"gradient_health": ZERO_GRAD, "incomplete_optimization": NOT_CONVERGED}))
    text = _row_of(table, "natural")[PGD]
    assert text.count("⚠") == 1 and len(_marks(text)) == 3
    notes = [table.notes[i - 1] for i in _marks(text)]
    assert notes[0] == "natural × pgd_linf: possible gradient masking"
    assert notes[1].startswith("attack failed: zero gradients") and notes[2].startswith("attack may be weak")


def test_only_rows_that_went_into_the_worst_case_make_it_unreliable(tmp_path):
    # fgsm on another test subset (n = 50) is left out of the per-sample worst case: its failure does not count
    table = _board(tmp_path,
                   cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)), checks=HEALTHY),
                   cell("natural", "fgsm", CORRECT[:50], fooling(50, range(10, 20)),
                        checks={"gradient_health": ZERO_GRAD}))
    natural = _row_of(table, "natural")
    assert "⚠" in natural["fgsm (Linf 8/255)"]
    assert natural[WORST].startswith("≤ 70.0") and "unreliable" not in natural[WORST]


def test_worst_case_bounded_by_rows_without_manifests_is_unreliable_on_a_failed_check(tmp_path):
    store = write(tmp_path, [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                                  checks={"randomness": check("fail", "random, no EOT", "the model is stochastic")}),
                             cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 70)))])
    for path in store.manifest_dir.glob("*.json"):
        path.unlink()
    results = Results.load(tmp_path)
    sl = results.slice("cifar10", "quick", "0")
    notes = Notes()
    worst = worst_cell(sl, "natural", ["pgd_linf", "cw_linf"], notes)
    assert worst.unreliable and worst.text.startswith("≤ 50.0") and "(unreliable)" in worst.text
    assert "pgd_linf (randomness: random, no EOT)" in notes.items[-1]


def test_csv_export_keeps_its_layout_and_says_unreliable(tmp_path):
    store = write(tmp_path, [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                                  checks={"output_form": check("fail", "returns probabilities", "99.0% of rows sum to 1")}),
                             cell("pgd_at", "pgd_linf", CORRECT, fooling(N, range(10, 20)), checks=HEALTHY)])
    path = render(store.rows(), "cifar10", "quick", tmp_path, latex=True)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "leaderboard.csv").read_text())))
    assert list(rows[0]) == ["defense", "clean", PGD, WORST, "attack s", "fwd passes", "bwd passes", "train s",
                             "device"]
    by = {r["defense"]: r for r in rows}
    assert "(unreliable)" in by["natural"][WORST] and "unreliable" not in by["pgd_at"][WORST]
    text = path.read_text()
    assert "attack failed: returns probabilities (output_form): 99.0% of rows sum to 1" in text
    assert "natural worst case unreliable" in text and "(unreliable)" in (tmp_path / "leaderboard.tex").read_text()


SPEC = """
[tables.mini]
title = "mini"
source = "test"
dataset = "cifar10"
columns = [{ label = "PGD", cell = "pgd_linf" }, { label = "worst", cell = "worst" }]
worst_of = ["pgd_linf", "cw_linf"]
[[tables.mini.rows]]
label = "Natural"
defense = "natural"
paper = [0.0, 0.0]
"""


def test_spec_tables_mark_cells_and_the_worst_route(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + "\n" + SPEC)
    cfg = load_config(path)
    write(tmp_path / "r", [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 30)),
                                checks={"gradient_health": ZERO_GRAD}),
                           cell("natural", "cw_linf", CORRECT, fooling(N, range(30, 50)),
                                checks={"incomplete_optimization": NOT_CONVERGED})])
    table = spec_table(Results.load(tmp_path / "r"), cfg, "mini", "quick")
    natural = _row_of(table, "Natural")
    assert "⚠" in natural["PGD"] and natural["PGD"].endswith("†")  # 70 % against the paper's 0
    assert "(unreliable)" in natural["worst"] and natural["worst"].startswith("50.0")
    notes = " ".join(table.notes)
    assert "attack failed: zero gradients" in notes and "natural worst case unreliable" in notes
    assert "cw_linf" not in notes.split("natural worst case unreliable")[1]  # a warn does not make it unreliable


def _audit_report(root, defense="natural", checkpoint="ckpt", original=0.49, adapted=0.03, failed=("black_box",),
                  only=()):
    """A bench audit report as bench.audit.write leaves it (only the fields the tables read)."""
    from bench.audit import write as write_report

    checks = {k: check("fail" if k in failed else "pass", "x", "why") for k in ("black_box", "unbounded")}
    return write_report({"defense": defense, "dataset": "cifar10", "profile": "quick", "seed": 0, "norm": "linf",
                         "only": list(only),
                         "eps": 8 / 255, "n": N, "checkpoint": checkpoint, "checks": checks,
                         "original": {"robust_acc": original}, "adapted": {"robust_acc": adapted,
                                                                           "attacks": ["base", "transfer_natural"]}},
                        root)


def test_audited_column_shows_the_adapted_number_and_the_failed_audit_checks(tmp_path):
    write(tmp_path, [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 59)))])
    _audit_report(tmp_path)
    table = leaderboard(Results.load(tmp_path), "cifar10", "quick")
    audited = _row_of(table, "natural")["audited (adapted)"]
    assert audited.startswith("Linf 8/255: 3.0 (was 49.0) ⚠")
    note = table.notes[_marks(audited)[0] - 1]
    assert "failed black_box" in note and "transfer_natural" in note and "n = 100" in note
    # render() (what bench run and bench table write) reads the same reports
    md = render(Results.load(tmp_path).rows, "cifar10", "quick", tmp_path).read_text()
    assert "audited (adapted)" in md and "3.0 (was 49.0)" in md


def test_no_audit_no_column_and_an_audit_of_another_checkpoint_is_not_shown(tmp_path):
    write(tmp_path, [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 59)))])
    assert "audited (adapted)" not in leaderboard(Results.load(tmp_path), "cifar10", "quick").header
    _audit_report(tmp_path, checkpoint="an-older-one")
    (tmp_path / "audit" / "torn.json").write_text('{"defense": "natu')  # a torn report is skipped, never fatal
    table = leaderboard(Results.load(tmp_path), "cifar10", "quick")
    assert "audited (adapted)" in table.header
    assert _row_of(table, "natural")["audited (adapted)"] == ""
    assert any("checkpoint an-older-one" in n and "re-run bench audit" in n for n in table.notes)


def test_a_partial_audit_is_written_apart_and_never_shown_on_the_leaderboard(tmp_path):
    """`bench audit --only ROLES` checks part of what an audit checks: its adapted number is not the audit's."""
    write(tmp_path, [cell("natural", "pgd_linf", CORRECT, fooling(N, range(10, 59)))])
    partial = _audit_report(tmp_path, adapted=0.2, only=("black_box",))
    assert partial.name.endswith("-only-black_box.json")
    assert "audited (adapted)" not in leaderboard(Results.load(tmp_path), "cifar10", "quick").header
    full = _audit_report(tmp_path)
    assert full != partial and partial.exists()
    audited = _row_of(leaderboard(Results.load(tmp_path), "cifar10", "quick"), "natural")["audited (adapted)"]
    assert audited.startswith("Linf 8/255: 3.0 (was 49.0)")
