"""The checks of `bench audit` (bench/audit.py runs the attacks): unbounded sanity, budget and effort
monotonicity, loss disagreement, black-box and single-step stronger than iterative, adaptation, from the paired
per-point outcomes of its attacks on the same test points, and the adapted number (the per-point worst case)."""
from __future__ import annotations

import torch

from ..stats import wilson_interval
from .cell import _check, worst
from .rules import black_box_stronger, paired_excess


def _paired(a: torch.Tensor, b: torch.Tensor, n: int, s) -> tuple[bool, int, int]:
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    return paired_excess(a_only, b_only, n, s.alpha, s.min_points), a_only, b_only


def audit_checks(results: dict, correct: torch.Tensor, s) -> dict:
    """The expensive checks from the paired per-point outcomes, and the adapted (worst-case) number. results:
    {variant label: {"role", "robust", "robust_acc", "ci", "eps", "eps_factor", "checks", "_fooled" (per point)}}
    of the variants that ran; correct: the clean verdict per point; s: [verdicts.audit]."""
    n = len(correct)
    ran = {k: v for k, v in results.items() if "_fooled" in v}
    base = ran["base"]["_fooled"]
    by_role = lambda role: [(k, v) for k, v in ran.items() if v["role"] == role]  # noqa: E731
    checks: dict = {}
    unb = [v for _, v in by_role("unbounded")]
    if unb:
        acc = unb[0]["robust_acc"]
        checks["unbounded"] = _check(
            "fail" if acc > s.unbounded_max else "pass", "cannot succeed unbounded" if acc > s.unbounded_max else "ok",
            f"with eps = the whole image box the attack leaves {acc:.1%}" +
            (": masking or a broken attack" if acc > s.unbounded_max else ""), acc, s.unbounded_max, n)
    # budget: a point fooled at a smaller eps but not at a larger one, beyond the noise
    ladder = sorted([(v["eps_factor"], v["_fooled"]) for _, v in by_role("budget")] + [(1.0, base)],
                    key=lambda t: t[0])
    bad = []
    for (f_small, small), (f_big, big) in zip(ladder, ladder[1:]):
        hit, a_only, b_only = _paired(small, big, n, s)
        if hit:
            bad.append(f"eps x{f_small:g} fools {a_only} points eps x{f_big:g} leaves (reverse {b_only})")
    if by_role("budget"):  # a check is reported only where its attacks ran: never a pass for nothing compared
        checks["budget_monotonicity"] = _check(
            "fail" if bad else "pass", "accuracy rises with eps" if bad else "ok",
            "; ".join(bad) or "accuracy does not rise with eps beyond the noise")
    bad = []
    for k, v in by_role("effort"):
        hit, a_only, b_only = _paired(v["_fooled"], base, n, s)
        if hit:
            bad.append(f"{k} fools {a_only} more points (reverse {b_only})")
    if by_role("effort"):
        checks["effort"] = _check("warn" if bad else "pass", "not converged" if bad else "ok",
                                           ("; ".join(bad) + ": more effort lowers the accuracy, use it") if bad
                                           else "more steps and restarts fool no more points beyond the noise")
    for k, v in by_role("loss"):
        hit, a_only, b_only = _paired(v["_fooled"], base, n, s)
        other_weak, _, _ = _paired(base, v["_fooled"], n, s)
        why = (f"{k} fools {a_only} points the base loss leaves robust (reverse {b_only}): "
               + ("CE saturated?" if "CW" in k else "margin loss weak?") if hit else
               f"the two losses agree within the noise ({a_only} vs {b_only})" +
               ("; the base loss is the stronger one" if other_weak else ""))
        checks["loss_disagreement"] = _check("fail" if hit else "pass", "loss disagreement" if hit else "ok", why)
    white = base.clone()
    for role in ("effort", "loss", "budget"):
        for k, v in by_role(role):
            if role != "budget" or ran[k].get("eps", 0) <= ran["base"]["eps"] * (1 + 1e-9):
                white |= v["_fooled"]
    for role, name, label in (("black_box", "black_box", "black-box stronger than white-box: gradient masking"),
                              ("single_step", "single_step", "single-step stronger than iterative: gradient masking")):
        bad = []
        for k, v in by_role(role):
            if role == "black_box":
                a_only, b_only = int((v["_fooled"] & ~white).sum()), int((white & ~v["_fooled"]).sum())
                hit = black_box_stronger(a_only, b_only, n, s.alpha, s.min_points)
            else:
                hit, a_only, b_only = _paired(v["_fooled"], base, n, s)
            if hit:
                bad.append(f"{k} fools {a_only} points the white-box attacks leave robust (reverse {b_only})")
        if by_role(role):
            checks[name] = _check("fail" if bad else "pass", label.split(":")[0] if bad else "ok",
                                           ("; ".join(bad) + f": {label.split(': ')[1]}") if bad else
                                           "fools no point beyond the noise that the white-box attacks leave")
    # an adaptation (EOT, another backward surrogate) that fools points the base attack leaves robust means the
    # base attack's gradients were the weak part: the cell's number overstates robustness
    adapted = [(k, v) for k, v in ran.items() if v["role"].startswith("adapted:")]
    if adapted:
        bad = []
        for k, v in adapted:
            hit, a_only, b_only = _paired(v["_fooled"], base, n, s)
            if hit:
                bad.append(f"{k} fools {a_only} points the base attack leaves robust (reverse {b_only})")
        checks["adaptation"] = _check(
            "fail" if bad else "pass", "adapted attack stronger" if bad else "ok",
            ("; ".join(bad) + ": the base attack's gradients are weak, report the adapted number") if bad
            else "no adaptation fools points beyond the noise that the base attack leaves")
    # the adapted number: per point, the worst case over every attack at (or inside) the audited budget
    fooled_any = torch.zeros(n, dtype=torch.bool)
    used = []
    for k, v in ran.items():
        if v["role"] in ("unbounded",) or (v["role"] == "budget" and v["eps"] > ran["base"]["eps"] * (1 + 1e-9)):
            continue
        fooled_any |= v["_fooled"]
        used.append(k)
    k_w = int((correct & ~fooled_any).sum())
    lo, hi = wilson_interval(k_w, n)
    base_k = ran["base"]["robust"]
    return {"checks": checks, "original": {"robust": base_k, "robust_acc": base_k / n, "ci": ran["base"]["ci"]},
            "adapted": {"robust": k_w, "robust_acc": k_w / n, "ci": [lo, hi], "attacks": used},
            "verdict": worst({**checks, **ran["base"]["checks"]}),
            "per_sample_adapted_robust": (correct & ~fooled_any).tolist()}
