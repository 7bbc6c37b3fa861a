"""Decoupled Direction and Norm attack (DDN; Rony et al., CVPR 2019), L2, through foolbox 3.

Why foolbox's DDN: a pinned dependency already, and a line-by-line port of the authors' algorithm (CE-loss
gradient step with cosine-annealed size, the L2 radius multiplied by (1 - gamma) while adversarial and by
(1 + gamma) while not); adv-lib (the authors' own library) cannot be imported here (it needs visdom, which does
not build)."""
from __future__ import annotations

from typing import Literal

import foolbox as fb

from bench import Field, Number, register_attack

from ._gradient_minnorm import GradientMinNorm, GradientMinNormParams


@register_attack("ddn")
class DDN(GradientMinNorm):
    """Decoupled Direction and Norm (foolbox 3): white-box minimal L2 perturbation per point."""

    salt = 12
    loss_kind = "ce"  # DDN steps on the cross-entropy gradient

    class Params(GradientMinNormParams):
        norm: Literal["l2"] = "l2"
        init_epsilon: Number = Field(1.0, gt=0, description="first L2 radius")
        gamma: Number = Field(0.05, gt=0, lt=1, description="radius update factor per step")

    def minimize(self, model, x, y, gen):
        p = self.params
        attack = fb.attacks.DDNAttack(init_epsilon=p.init_epsilon, steps=p.steps, gamma=p.gamma)
        return attack.run(fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, fb.criteria.Misclassification(y))
