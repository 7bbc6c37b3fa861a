"""Attack optimality in `bench regress`: a minimum-norm attack whose per-sample norms moved away from the best known
ones is a regression, even where its success rate and mean norm stay within their tolerances.

A baseline stores, per minimum-norm cell, the per-sample norms the attack found and the best norms over every
attack of its run (bench/report/curves.py's merged evidence), in its sidecar JSON. At comparison, both runs are
scored against the same reference: per point the smaller of the baseline's and this run's best norms (on the
points the two share). Scoring against this run's own best alone would hide a weakened attack that supplies most of
the best evidence itself (its weaker norms would become the best and it would stay optimal); against the joint best
the weakened run's area grows while the reference does not. Optimality = area(joint best) / area(attack) up to the
largest finite norm of the joint best and of both runs' attack norms (curves.optimality's definition)."""
from __future__ import annotations

import math

import numpy as np

from .curves import area_limit, area_ratio, slice_curves


def _key(dataset, defense, attack, profile, seed) -> str:
    return "|".join(str(v) for v in (dataset, defense, attack, profile, seed))


def _json_norms(values: np.ndarray) -> list:
    return [None if not math.isfinite(v) else float(v) for v in values]


def _array(values: list) -> np.ndarray:
    return np.array([math.inf if v is None else float(v) for v in values], float)


def min_norm_evidence(results, cells) -> dict:
    """{cell key: {norm, index, norms, best}} for every minimum-norm cell of `cells` (KEY tuples) with per-sample
    norms: the attack's norms and the best over all of its slice's evidence, on the curve's points (inf as null)."""
    out, curves_of = {}, {}
    for dataset, defense, attack, profile, seed in cells:
        slice_key = (dataset, profile, seed)
        if slice_key not in curves_of:
            curves_of[slice_key] = slice_curves(results.slice(dataset, profile, seed))
        for curves in curves_of[slice_key].values():
            for curve in curves:
                if curve.defense != defense:
                    continue
                e = next((e for e in curve.attacks if e.attack == attack and e.min_norm), None)
                if e is not None:
                    out[_key(dataset, defense, attack, profile, seed)] = {
                        "norm": e.norm, "index": [int(i) for i in curve.index], "norms": _json_norms(e.norms),
                        "best": _json_norms(curve.best)}
    return out


def compare_optimality(stored: dict, current: dict) -> list[tuple[str, float, float, int]]:
    """(cell key, baseline optimality, current optimality, points compared) for each cell in both, both scored
    against the joint best on their shared points."""
    out = []
    for key, b in stored.items():
        c = current.get(key)
        if c is None or b.get("norm") != c.get("norm"):
            continue
        where = {int(i): k for k, i in enumerate(c["index"])}
        shared = [(k, where[int(i)]) for k, i in enumerate(b["index"]) if int(i) in where]
        if not shared:
            continue
        bi, ci = (np.array(v, int) for v in zip(*shared))
        b_norms, b_best = _array(b["norms"])[bi], _array(b["best"])[bi]
        c_norms, c_best = _array(c["norms"])[ci], _array(c["best"])[ci]
        joint = np.minimum(b_best, c_best)
        upto = area_limit(joint, b_norms, c_norms)  # one limit for both runs (bench.report.curves.optimality)
        out.append((key, area_ratio(joint, b_norms, upto), area_ratio(joint, c_norms, upto), len(shared)))
    return out


def cell_of(key: str) -> tuple:
    return tuple(key.split("|"))
