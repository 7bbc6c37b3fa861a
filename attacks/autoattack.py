"""AutoAttack (Croce & Hein 2020) through `pyautoattack`, the authors' code: the standard version and custom
subsets of its sub-attacks (APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T, Square), Linf/L2/L1.

The sub-attacks run in AutoAttack's order on the points still robust, exactly as its `run_standard_evaluation`
does, but the loop is ours so that (a) the sub-attack that fooled each point is recorded (`fooled_by` per sample
in the manifest, counts in the attack info), (b) stochastic defenses are judged by their evaluation ensemble,
and (c) the defense's backward surrogate is used for the gradients."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import model_validator

from bench import Attack, AttackOutput, AttackParams, Field, Number, enforce_budget, register_attack

from ._whitebox import attacked_model, ensemble_judge, gradient_warnings

if TYPE_CHECKING:
    from pyautoattack import AutoAttack

SubAttack = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


class AutoAttackParams(AttackParams):
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description="perturbation budget in the chosen norm (pixels in [0, 1])")
    n_iter: int = Field(100, ge=1, description="APGD and FAB iterations (100 = the authors'; lower only to save time)")
    square_queries: int = Field(5000, ge=1, description="Square Attack queries (5000 = the authors')")
    backward: str = Field("autograd", description="defense backward surrogate, e.g. 'smooth:4', 'top_u:30', 'identity'")


class _AutoAttackBase(Attack):
    Params = AutoAttackParams
    gradient_based = True  # Square, its one gradient-free part, runs last, on the points APGD and FAB left

    def __init__(self, params):
        super().__init__(params)
        # a custom list of Square alone is a score-based attack: no gradient to check
        self.gradient_based = list(getattr(params, "attacks", ["apgd-ce"])) != ["square"]

    def build(self, model, device, seed: int) -> AutoAttack:
        raise NotImplementedError

    def eot_passes(self) -> int:
        return 1

    def run(self, model, x, y, ctx):
        p = self.params
        gradient_warnings(ctx, p.backward, self.eot_passes(), uses_gradients=self.gradient_based)
        judge = ensemble_judge(ctx)
        fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        fooled_by = [""] * len(y)
        x_adv = x.clone()
        # the sub-attacks reseed torch's global RNG: fork it so the caller's random stream is left as it was
        devices = [ctx.device] if torch.device(ctx.device).type == "cuda" else []
        with attacked_model(ctx, model, p.backward) as m, torch.random.fork_rng(devices=devices), torch.no_grad():
            aa = self.build(m, ctx.device, ctx.seed)
            _set_budget_of_work(aa, p.n_iter, p.square_queries)
            ctx.info.setdefault("autoattack", {"attacks": list(aa.attacks_to_run), **_settings(aa)})
            counts = ctx.info.setdefault("fooled_by_counts", {})
            seconds = ctx.info.setdefault("seconds_by", {})
            for name in aa.attacks_to_run:
                idx = (~fooled).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                t0 = time.perf_counter()
                adv = _perturb(aa, name, x[idx], y[idx], ctx.seed).to(x.dtype)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
                enforce_budget(adv, x[idx], p.norm, p.eps)
                hit = judge(adv, y[idx]) if judge is not None else m(adv).argmax(1) != y[idx]
                x_adv[idx[hit]] = adv[hit]
                fooled[idx[hit]] = True
                for i in idx[hit].tolist():
                    fooled_by[i] = name
                counts[name] = counts.get(name, 0) + int(hit.sum())
        return AttackOutput(x_adv=x_adv, fooled=fooled, extra={"fooled_by": fooled_by})


def _perturb(aa: AutoAttack, name: str, x, y, seed: int) -> torch.Tensor:
    """One sub-attack on (x, y), configured as AutoAttack.run_standard_evaluation configures it."""
    if name in ("apgd-ce", "apgd-dlr"):
        atk = aa.apgd
        atk.loss = name[len("apgd-"):]
    elif name == "apgd-t":
        atk = aa.apgd_targeted
    elif name in ("fab", "fab-t"):
        atk = aa.fab
        atk.targeted = name == "fab-t"
        if atk.targeted:
            atk.n_restarts = 1
    else:
        atk = aa.square
    atk.seed = seed
    return atk.perturb(x, y)


def _set_budget_of_work(aa: AutoAttack, n_iter: int, square_queries: int) -> None:
    """Iterations and queries other than the authors' 100 / 5000 (smoke and quick profiles). APGD derives its
    step-size checkpoints from n_iter when built, so they are re-derived with its formulas (0.22, 0.06, 0.03)."""
    for atk in (aa.apgd, aa.apgd_targeted):
        if atk.n_iter_orig != n_iter:
            atk.n_iter = atk.n_iter_orig = n_iter
            atk.n_iter_2 = max(int(0.22 * n_iter), 1)
            atk.n_iter_min = max(int(0.06 * n_iter), 1)
            atk.size_decr = max(int(0.03 * n_iter), 1)
    aa.fab.n_iter = n_iter
    aa.square.n_queries = square_queries


def _settings(aa: AutoAttack) -> dict:
    return {"version": aa.version, "norm": aa.norm, "eps": aa.epsilon, "n_iter": aa.apgd.n_iter_orig,
            "apgd_restarts": aa.apgd.n_restarts, "apgd_t_restarts": aa.apgd_targeted.n_restarts,
            "apgd_t_targets": aa.apgd_targeted.n_target_classes, "fab_restarts": aa.fab.n_restarts,
            "fab_targets": aa.fab.n_target_classes, "square_queries": aa.square.n_queries,
            "eot_iter": aa.apgd.eot_iter, "rho": aa.apgd.thr_decr, "largereps": aa.apgd.use_largereps}


@register_attack("autoattack")
class AutoAttackStandard(_AutoAttackBase):
    """AutoAttack via pyautoattack (standard: APGD-CE, APGD-T, FAB-T, Square); records which sub-attack fooled each point."""

    class Params(AutoAttackParams):
        version: Literal["standard", "plus", "rand"] = Field(
            "standard", description="the authors' versions; 'rand' (APGD-CE/DLR with 20 EOT passes) for stochastic defenses")

    def eot_passes(self) -> int:
        return 20 if self.params.version == "rand" else 1

    def build(self, model, device, seed):
        from pyautoattack import AutoAttack  # imported when used: plug-in discovery must not load its 40 MB

        p = self.params
        return AutoAttack(model, norm=_NORMS[p.norm], eps=p.eps, version=p.version, device=device, seed=seed)


@register_attack("apgd")
class APGDCustom(_AutoAttackBase):
    """Custom AutoAttack subset via pyautoattack (default APGD-CE + APGD-DLR, 1 restart), per-point sub-attack recorded."""

    class Params(AutoAttackParams):
        attacks: list[SubAttack] = Field(["apgd-ce", "apgd-dlr"], min_length=1,
                                         description="sub-attacks, run in this order on the points still robust")
        n_restarts: int = Field(1, ge=1, description="restarts of APGD, APGD-T (per target) and untargeted FAB")
        n_target_classes: int = Field(9, ge=1, description="target classes of APGD-T and FAB-T")
        eot_iter: int = Field(1, ge=1, description="EOT gradient passes per APGD step (stochastic defenses)")
        rho: Number = Field(0.75, gt=0, lt=1, description="APGD step-size halving threshold")
        use_largereps: bool = Field(False, description="L1 only: APGD's 3·eps → 2·eps → eps schedule (standard L1)")

        @model_validator(mode="after")
        def _largereps_is_l1(self):
            if self.use_largereps and self.norm != "l1":
                raise ValueError(f"use_largereps = true needs norm = 'l1', not {self.norm!r}")
            return self

    def eot_passes(self) -> int:
        return self.params.eot_iter

    def build(self, model, device, seed):
        from pyautoattack import AutoAttack

        p = self.params
        aa = AutoAttack(model, norm=_NORMS[p.norm], eps=p.eps, version="custom", attacks=list(p.attacks),
                        device=device, seed=seed)
        for atk in (aa.apgd, aa.apgd_targeted):
            atk.eot_iter, atk.thr_decr, atk.use_largereps = p.eot_iter, p.rho, p.use_largereps
        aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = aa.fab.n_restarts = p.n_restarts
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = p.n_target_classes
        return aa
