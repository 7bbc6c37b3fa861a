"""Projected-gradient attacks (PGD, FGSM, BIM, CW-loss PGD, PGD-EOT) on the shared engine `bench.pgd`."""
from __future__ import annotations

from typing import Literal

from bench import Attack, AttackOutput, AttackParams, Field, Number, register_attack
from bench.params import StepSize, step_value
from bench.pgd import PGDSettings, run_pgd


class PGDParams(AttackParams):
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description="perturbation budget in the chosen norm (pixels in [0, 1])")
    steps: int = Field(40, ge=1)
    step_size: StepSize = Field("eps/8", description="absolute (\"1/255\") or relative to eps (\"eps/8\", \"2.5*eps\")")
    restarts: int = Field(1, ge=1, description="random restarts; a point is robust only if none fools it")
    batch_restarts: int = Field(1, ge=1, description="restarts run side by side as replicas in one batch")
    loss: Literal["ce", "cw"] = "ce"
    kappa: Number = Field(50.0, ge=0, description="CW margin confidence (papers: 50)")
    random_start: bool = True
    eot_samples: int = Field(1, ge=1, description="stochastic passes averaged per step (EOT)")
    eot_mode: Literal["mean", "normalized"] = Field("mean", description="'normalized' = mean of per-image L2-normalised gradients")
    backward: str = Field("autograd", description="defense backward surrogate, e.g. 'smooth:4', 'top_u:30', 'identity'")
    early_stop: bool = Field(True, description="drop points from the batch as soon as they are fooled")
    l1_sparsity: Number = Field(0.99, gt=0, lt=1, description="L1: fraction of coordinates NOT moved per step (SLIDE)")
    l1_step: Literal["slide", "dense"] = Field("slide", description="L1 step: sparse SLIDE step, or the authors' weaker dense rescale")
    amp: bool = Field(False, description="CUDA autocast inside the attack loop; the harness re-checks in fp32")

    def settings(self) -> PGDSettings:
        step = step_value(self.step_size, self.eps)
        return PGDSettings(norm=self.norm, eps=self.eps, steps=self.steps, step_size=step, restarts=self.restarts,
                           batch_restarts=min(self.batch_restarts, self.restarts), loss=self.loss, kappa=self.kappa,
                           random_start=self.random_start, eot_samples=self.eot_samples, eot_mode=self.eot_mode,
                           early_stop=self.early_stop, l1_sparsity=self.l1_sparsity, l1_step=self.l1_step, amp=self.amp)


class _PGDBase(Attack):
    Params = PGDParams

    def run(self, model, x, y, ctx):
        p = self.params
        defense = ctx.defense
        if defense is not None and defense.non_differentiable and p.backward in ("", "autograd"):
            ctx.warnings.append(f"defense '{defense.name}' declares non-differentiable parts "
                                f"({', '.join(defense.non_differentiable)}) and the attack used plain autograd: "
                                f"possible gradient masking; try backward = one of {list(defense.surrogates)}")
        if defense is not None and defense.stochastic and p.eot_samples == 1:
            ctx.warnings.append(f"defense '{defense.name}' is stochastic and the attack used no EOT (eot_samples = 1)")
        stochastic = defense is not None and defense.stochastic
        judge = None
        if stochastic and ctx.eval_model is not None:
            judge = lambda xa, ya: ctx.eval_model(xa).argmax(1) != ya  # noqa: E731
        with defense.surrogate(model, p.backward) if defense is not None else _null(model) as m:
            x_adv, fooled = run_pgd(m, x, y, p.settings(), ctx.generator(), judge=judge)
        return AttackOutput(x_adv=x_adv, fooled=fooled)


class _null:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        return False


@register_attack("pgd_linf")
class PGDLinf(_PGDBase):
    """PGD in Linf (sign step, clamp projection), CE loss by default, per-sample worst case over restarts."""

    class Params(PGDParams):
        norm: Literal["linf", "l2", "l1"] = "linf"


@register_attack("pgd_l2")
class PGDL2(_PGDBase):
    """PGD in L2 (normalised-gradient step, exact L2-ball projection)."""

    class Params(PGDParams):
        norm: Literal["linf", "l2", "l1"] = "l2"
        eps: Number = Field(0.6, ge=0)


@register_attack("pgd_l1")
class PGDL1(_PGDBase):
    """PGD in L1 with the sparse SLIDE step and exact projection onto the L1 ball ∩ image box."""

    class Params(PGDParams):
        norm: Literal["linf", "l2", "l1"] = "l1"
        eps: Number = Field(30.0, ge=0)


@register_attack("cw_linf")
class CWLinf(_PGDBase):
    """PGD in Linf with the Carlini-Wagner margin loss (kappa = 50 as in the papers)."""

    class Params(PGDParams):
        loss: Literal["ce", "cw"] = "cw"


@register_attack("pgd_eot")
class PGDEOT(_PGDBase):
    """PGD with Expectation over Transformation for stochastic defenses (mean of normalised gradients)."""

    class Params(PGDParams):
        eot_samples: int = Field(40, ge=1)
        eot_mode: Literal["mean", "normalized"] = "normalized"


@register_attack("fgsm")
class FGSM(_PGDBase):
    """FGSM: one signed-gradient step of size eps from the clean point."""

    class Params(PGDParams):
        steps: int = Field(1, ge=1)
        step_size: StepSize = "eps"
        random_start: bool = False


@register_attack("bim")
class BIM(_PGDBase):
    """BIM: iterative signed-gradient steps from the clean point (no random start)."""

    class Params(PGDParams):
        steps: int = Field(20, ge=1)
        random_start: bool = False
