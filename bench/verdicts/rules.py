"""The rules shared by the audit, the suites and the checks across cells, each written once.

"A black-box attack fools points every gradient attack left robust" is the mark of masked gradients (Athalye et
al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness", §5): the white-box numbers overstate
robustness. Three places look for it on different evidence: `bench audit` on the paired outcomes of its own
attacks (bench/verdicts/audit_checks.py), a suite on its stages (bench/verdicts/suite_checks.py: a black-box stage
only sees the points the gradient stages before it left robust, so the reverse count is 0), and the leaderboards
on the per-sample verdicts of independent cells (bench/verdicts/cross_cell.py). Each counts the points; the
decision is black_box_stronger's."""
from __future__ import annotations

from ..stats import paired_excess

__all__ = ["black_box_stronger", "paired_excess"]


def black_box_stronger(black_only: int, white_only: int, n: int, alpha: float, min_points: float) -> bool:
    """Does the black-box side fool significantly more of the n paired points than the white-box side, the points
    every gradient attack left robust (black_only) against the reverse (white_only)? One-sided exact McNemar at
    alpha, and a difference of more than min_points·n points ([verdicts.audit] alpha / min_points)."""
    return paired_excess(black_only, white_only, n, alpha, min_points)
