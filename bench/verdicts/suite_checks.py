"""Checks on a threat-model suite's own stages (bench/suite.py), from their counts: no attack runs again."""
from __future__ import annotations

from .cell import _check
from .rules import black_box_stronger


def suite_black_box(attacks: list[str], gradient: list[bool], summaries: list[dict], n: int, audit) -> dict | None:
    """bench audit's "black-box stronger than white-box" on the suite's own stages: a stage that does not follow
    the target's gradients (score- or decision-based, transfer) fooling points that every earlier gradient stage
    left robust is what that check looks for. The suite never runs it on the points white-box stages fooled, so
    the reverse count is 0 and the rule (bench.verdicts.rules.black_box_stronger: one-sided exact McNemar, more than
    min_points of the n points) reduces to: it fooled more than min_points·n of them, with p = 0.5^k < alpha.
    attacks, gradient, summaries: per stage, in order; audit: [verdicts.audit]. None when the suite has no
    gradient stage or no other stage."""
    if not any(gradient) or all(gradient):
        return None
    bad, seen_white = [], False
    for attack, grad, summary in zip(attacks, gradient, summaries):
        seen_white |= grad
        if not grad and seen_white and black_box_stronger(summary["fooled"], 0, n, audit.alpha, audit.min_points):
            bad.append(f"{attack} fools {summary['fooled']} of the {summary['given']} points the gradient "
                       f"stages before it left robust")
    if bad:
        return _check("fail", "black-box stronger than white-box",
                      "; ".join(bad) + ": gradient masking (or white-box attacks too weak)")
    return _check("pass", "ok", "no later black-box stage fools more than the noise of what the gradient "
                                "stages left robust")
