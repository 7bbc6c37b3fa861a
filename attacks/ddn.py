"""Decoupled Direction and Norm attack (DDN; Rony et al., CVPR 2019), L2.

The updates are foolbox 3's DDNAttack, a line-by-line port of the authors' algorithm (CE-loss gradient step with
cosine-annealed size, the L2 radius multiplied by (1 - gamma) while adversarial and by (1 + gamma) while not),
run by attacks/_minnorm_loops.py so that a point whose best norm stopped improving leaves the batch (per-point
early stop; foolbox's own loop steps every point for every step). adv-lib (the authors' own library) cannot be
imported here (it needs visdom, which does not build)."""
from __future__ import annotations

from typing import Literal

from bench import Field, Number, register_attack

from . import _minnorm_loops
from ._gradient_minnorm import EarlyStopParams, GradientMinNorm, report_early_stop


@register_attack("ddn")
class DDN(GradientMinNorm):
    """Decoupled Direction and Norm (foolbox 3's updates, per-point early stop): white-box minimal L2 perturbation per point."""

    salt = 12
    loss_kind = "ce"  # DDN steps on the cross-entropy gradient

    class Params(EarlyStopParams):
        norm: Literal["l2"] = "l2"
        init_epsilon: Number = Field(1.0, gt=0, description="first L2 radius")
        gamma: Number = Field(0.05, gt=0, lt=1, description="radius update factor per step")

    def minimize(self, model, x, y, gen):
        p = self.params
        adv, self.saved = _minnorm_loops.ddn(model, x, y, p.steps, p.init_epsilon, p.gamma, p.stop_patience,
                                             p.stop_rtol, p.stop_from)
        return adv

    def report(self, ctx) -> None:
        report_early_stop(ctx, self.saved)
