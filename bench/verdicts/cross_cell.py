"""Checks across the cells of one defense at one threat model, computed from their per-sample verdicts (no attack
runs again): bench audit's "black-box stronger than white-box" and "single-step stronger than iterative" on the cells
a matrix ran anyway. A transfer, score- or decision-based attack, or FGSM, fooling points that every iterative
gradient attack of the same threat model left robust is the mark of masked gradients (Athalye et al. 2018; Carlini
et al. 2019, "On evaluating adversarial robustness", §5): the white-box numbers overstate robustness, and the worst
case is only as good as the black-box attack that happened to run. The test is the audit's (one-sided exact McNemar
on the paired outcomes, more than min_points of the points) with the thresholds the judged cell's run recorded
([verdicts.audit] alpha / min_points, so a committed snapshot re-renders the same), alpha divided by the number of
cells a check judges (Bonferroni: three honest black-box cells must not triple the false alarms).

Each judged cell is compared on the test points it shares with every iterative gradient cell (cells with their own
smaller n_test, ZOO's or Boundary's, do not shrink the others' comparisons). What a cell is comes from its manifest's
`attack_traits` (gradient_based, single_step), written by the runner. A group where some cell with per-sample data
has none (a manifest from before them) gets no verdict: leaving that cell out of the iterative side could turn
points it fooled into a false alarm. Suite rows take no part (their stages are checked by the suite's own
black_box verdict)."""
from __future__ import annotations

from ..data import TEST_SET_SIZE, subset_indices
from ..report.rows import threat_label, threat_model, to_float
from .rules import black_box_stronger, paired_excess


def sample_indices(row: dict, dataset: str) -> list[int] | None:
    """The test-set indices of a row's n points: the seeded subset bench.data.subset_indices draws."""
    size = TEST_SET_SIZE.get(dataset)
    n = int(to_float(row.get("n")))
    if not size or not n:
        return None
    return subset_indices(size, n, int(to_float(row.get("seed"))), f"{dataset}/test").tolist()


def _cells(results, dataset: str, rows: list[dict]) -> list[tuple[str, dict, dict, dict]] | None:
    """(attack, traits, paired test, {test index: robust}) of the ok rows with per-sample verdicts; None when one of
    them lacks its traits. `results`: a bench.report.tables.Results (that module imports this one)."""
    cells = []
    for r in sorted(rows, key=lambda r: r["attack"]):
        if r.get("status") != "ok":
            continue
        vec, _ = results.robust_vector(r)
        idx = sample_indices(r, dataset) if vec is not None else None
        if idx is None:
            continue  # no per-sample data: it bounds the worst case only, and nothing here can use it
        m = results.manifest(r) or {}
        if "suite" in m:
            continue  # a suite row is the worst case of its own stages, checked by its own black_box verdict
        if not m.get("attack_traits") or not m.get("paired_test"):
            return None
        cells.append((r["attack"], m["attack_traits"], m["paired_test"], dict(zip(idx, vec))))
    return cells


KINDS = (  # (check, which cells it judges, the verdict's short text, what it means)
    ("black_box", lambda t: not t.get("gradient_based"), "black-box stronger than white-box",
     "gradient masking, or white-box attacks too weak: run bench audit (BPDA, EOT, the margin loss)"),
    ("single_step", lambda t: t.get("single_step"), "single-step stronger than iterative",
     "gradient masking (the iterative attacks follow a misleading gradient): run bench audit"))


def cross_checks(results, dataset: str, rows: list[dict]) -> dict[str, dict]:
    """{"black_box" | "single_step": {"verdict", "short", "reason", "n"}} for the rows of one defense at one threat
    model; a check is present only when both sides ran (an iterative gradient attack and a cell it judges) on
    enough shared points for a verdict. An attack that mixes both kinds (standard AutoAttack runs Square after its
    gradient attacks) counts as iterative gradient: its own Square points then count as white-box ones."""
    return judge(_cells(results, dataset, rows))


def judge(cells: list[tuple[str, dict, dict, dict]] | None) -> dict[str, dict]:
    """The checks of cross_checks on cells given directly: (attack, attack_traits, {"alpha", "min_points"},
    {point: robust}) each (bench.evaluate's attacks, which ran on the same points)."""
    if not cells:
        return {}
    iterative = [(a, robust) for a, t, _, robust in cells if t.get("gradient_based") and not t.get("single_step")]
    if not iterative:
        return {}
    names = ", ".join(a for a, _ in iterative)
    out = {}
    for name, judged_by, short, meaning in KINDS:
        judged = [(a, test, robust) for a, t, test, robust in cells if judged_by(t)]
        bad, good = [], []  # (text, shared points) of the cells that failed, (attack, shared points) that passed
        for a, test, robust in judged:
            points = set(robust).intersection(*(set(r) for _, r in iterative))
            n = len(points)
            alpha = test["alpha"] / len(judged)
            if n == 0 or 0.5 ** n >= alpha:  # too few shared points for any outcome to be significant
                continue
            white = {i for i in points if not all(r[i] for _, r in iterative)}
            fooled = {i for i in points if not robust[i]}
            a_only, b_only = len(fooled - white), len(white - fooled)
            excess = black_box_stronger if name == "black_box" else paired_excess
            if excess(a_only, b_only, n, alpha, test["min_points"]):
                bad.append((f"{a} fools {a_only} of the {n - len(white)} points every iterative gradient attack "
                            f"({names}) left robust, of {n} shared (reverse {b_only})", n))
            else:
                good.append((a, n))
        if bad:
            out[name] = {"verdict": "fail", "short": short, "n": min(n for _, n in bad),
                         "reason": "; ".join(text for text, _ in bad) + f": {meaning}"}
        elif good:
            out[name] = {"verdict": "pass", "short": "ok", "n": min(n for _, n in good),
                         "reason": f"{', '.join(a for a, _ in good)} fool(s) no point beyond the noise that {names} "
                                   f"left robust"}
    return out


def failed_by_threat_model(results, dataset: str, rows: list[dict]) -> list[str]:
    """'<threat model>: <check> (<reason>)' for each cross-cell check that failed among rows of any threat models
    (a table whose worst case spans several)."""
    grouped: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        if (tm := threat_model(r)) is not None:
            grouped.setdefault(tm, []).append(r)
    return [f"{name} at {threat_label(tm)}: {c['short']}: {c['reason']}"
            for tm, group in sorted(grouped.items())
            for name, c in cross_checks(results, dataset, group).items() if c["verdict"] == "fail"]
