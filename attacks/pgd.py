"""Projected-gradient attacks (PGD, FGSM, BIM, CW-loss PGD, PGD-EOT) on the shared engine `bench.pgd`."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import torch

from bench import (Attack, AttackOutput, AttackParams, Field, Number, PGDSettings, StepSize, register_attack, run_pgd,
                   step_value)

from ._whitebox import attacked_model, ensemble_judge, gradient_warnings


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
    amp: bool = Field(False, description="CUDA bfloat16 autocast in the attack loop; fooled points are confirmed in fp32")
    channels_last: bool = Field(False, description="channels-last (NHWC) memory format in the attack loop")

    def settings(self) -> PGDSettings:
        """The engine's settings: every PGDSettings field this model also has, copied by name (so an engine
        setting is declared once, here as a field), then the two that are computed."""
        own = type(self).model_fields
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(PGDSettings) if f.name in own}
        values.update(step_size=step_value(self.step_size, self.eps, self.steps),  # "eps/8" -> a number
                      batch_restarts=min(self.batch_restarts, self.restarts))  # no more replicas than restarts
        return PGDSettings(**values)


class _PGDBase(Attack):
    Params = PGDParams
    gradient_based = True

    def run(self, model, x, y, ctx):
        p = self.params
        gradient_warnings(ctx, p.backward, p.eot_samples)
        with attacked_model(ctx, model, p.backward) as m, _channels_last(m, x, p.channels_last) as xin:
            x_adv, fooled = run_pgd(m, xin, y, p.settings(), ctx.generator(), judge=ensemble_judge(ctx),
                                   trace=ctx.trace, point_seeds=ctx.point_seeds())
        return AttackOutput(x_adv=x_adv.contiguous(), fooled=fooled)


@contextlib.contextmanager
def _channels_last(model, x, enabled: bool):
    """Speed option: NHWC memory format for the attack loop only (values unchanged; faster convolutions on
    GPUs and often on CPUs). Opt-in: a defense that reshapes with .view() may need contiguous NCHW input."""
    if not (enabled and x.dim() == 4):
        yield x
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield x.contiguous(memory_format=torch.channels_last)
    finally:
        model.to(memory_format=torch.contiguous_format)


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
