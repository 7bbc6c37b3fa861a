"""Checks across the cells of one defense at one threat model, computed from their per-sample verdicts (no attack
runs again): bench audit's "black-box stronger than white-box" and "single-step stronger than iterative" on the cells
a matrix ran anyway. A transfer, score- or decision-based attack, or FGSM, fooling points that every iterative
gradient attack of the same threat model left robust is the mark of masked gradients (Athalye et al. 2018; Carlini
et al. 2019, "On evaluating adversarial robustness", §5): the white-box numbers overstate robustness, and the worst
case is only as good as the black-box attack that happened to run. The test is the audit's (one-sided exact McNemar
on the paired outcomes, more than min_points of the points), with the thresholds each cell's run recorded
([verdicts.audit] alpha / min_points), so a committed snapshot re-renders the same.

What a cell is comes from its manifest's `attack_traits` (gradient_based, single_step), written by the runner;
cells without them (older manifests, suite rows, rows without per-sample data) take no part."""
from __future__ import annotations

from ..data import TEST_SET_SIZE, subset_indices
from ..stats import paired_excess
from .rows import threat_label, threat_model, to_float

DEFAULT_TEST = {"alpha": 0.05, "min_points": 0.02}  # [verdicts.audit]'s defaults, for a manifest without its own


def test_indices(row: dict, dataset: str) -> list[int] | None:
    """The test-set indices of a row's n points: the seeded subset bench.data.subset_indices draws."""
    size = TEST_SET_SIZE.get(dataset)
    n = int(to_float(row.get("n")))
    if not size or not n:
        return None
    return subset_indices(size, n, int(to_float(row.get("seed"))), f"{dataset}/test").tolist()


def _cells(results, dataset: str, rows: list[dict]) -> tuple[list[tuple[str, dict, dict]], dict]:
    """(attack, traits, {test index: robust}) of the rows that can take part, and their paired-test thresholds.
    `results`: a bench.report.tables.Results (its manifests and per-sample verdicts; that module imports this one)."""
    cells, test = [], None
    for r in sorted(rows, key=lambda r: r["attack"]):
        m = results.manifest(r) if r.get("status") == "ok" else None
        traits = (m or {}).get("attack_traits")
        vec, _ = results.robust_vector(r) if traits else (None, "")
        idx = test_indices(r, dataset) if vec is not None else None
        if idx is not None:
            cells.append((r["attack"], traits, dict(zip(idx, vec))))
            test = test or m.get("paired_test")
    return cells, {**DEFAULT_TEST, **(test or {})}


def cross_checks(results, dataset: str, rows: list[dict]) -> dict[str, dict]:
    """{"black_box" | "single_step": {"verdict", "short", "reason", "n"}} for the rows of one defense at one threat
    model; a check is present only when both sides ran (an iterative gradient attack and the other kind)."""
    cells, test = _cells(results, dataset, rows)
    iterative = [a for a, t, _ in cells if t.get("gradient_based") and not t.get("single_step")]
    if not iterative:
        return {}
    common = set.intersection(*(set(robust) for _, _, robust in cells))
    n = len(common)
    fooled = {a: {i for i in common if not robust[i]} for a, _, robust in cells}
    white = set().union(*(fooled[a] for a in iterative))
    out = {}
    for name, kind, label, why in (
            ("black_box", lambda t: not t.get("gradient_based"), "black-box stronger than white-box",
             "gradient masking, or white-box attacks too weak: run bench audit (BPDA, EOT, the margin loss)"),
            ("single_step", lambda t: t.get("single_step"), "single-step stronger than iterative",
             "gradient masking (the iterative attacks follow a misleading gradient): run bench audit")):
        others = [a for a, t, _ in cells if kind(t)]
        if not others:
            continue
        bad = []
        for a in others:
            a_only, b_only = len(fooled[a] - white), len(white - fooled[a])
            if paired_excess(a_only, b_only, n, test["alpha"], test["min_points"]):
                bad.append(f"{a} fools {a_only} of the {n} points every iterative gradient attack "
                           f"({', '.join(iterative)}) left robust (reverse {b_only})")
        out[name] = ({"verdict": "fail", "short": label, "reason": "; ".join(bad) + f": {why}", "n": n} if bad else
                     {"verdict": "pass", "short": "ok", "n": n,
                      "reason": f"{', '.join(others)} fool(s) no point beyond the noise that {', '.join(iterative)} "
                                f"left robust"})
    return out


def failed_by_threat_model(results, dataset: str, rows: list[dict]) -> list[str]:
    """'<threat model>: <check> (<reason>)' for each cross-cell check that failed among rows of any threat models
    (a table whose worst case spans several)."""
    grouped: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        if (tm := threat_model(r)) is not None:
            grouped.setdefault(tm, []).append(r)
    return [f"{threat_label(tm)}: {name} ({c['short']}: {c['reason']})"
            for tm, group in sorted(grouped.items())
            for name, c in cross_checks(results, dataset, group).items() if c["verdict"] == "fail"]
