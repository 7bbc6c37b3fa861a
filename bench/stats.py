"""Confidence intervals for accuracies measured on n points, and the paired test that compares two attacks on them."""
from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for k successes out of n (well-behaved at 0 % and 100 %)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_excess(a_only: int, b_only: int, n: int, alpha: float, min_points: float) -> bool:
    """McNemar's one-sided exact test on paired outcomes: does 'a fooled, b not' happen significantly more often
    than the reverse, and on more than min_points of the n points?"""
    if a_only - b_only <= min_points * n or a_only == 0:
        return False
    m = a_only + b_only
    # P(X >= a_only) for X ~ Binomial(m, 1/2)
    tail = sum(math.comb(m, k) for k in range(a_only, m + 1)) / 2 ** m
    return tail < alpha
