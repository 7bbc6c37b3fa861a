"""What the white-box minimum-norm attacks (FMN, DDN, FAB) share: their parameters, the model they differentiate
(the defense's backward surrogate, EOT over stochastic passes, frozen weights) and the verdict on what they return.

The libraries' own loops do the minimisation; this wrapper gives them the same attacked model the PGD engine gets
(attacks/_whitebox.py) and re-judges every returned point with the model whose decision counts (the evaluation
ensemble for stochastic defenses), so a point the library thinks it fooled but the defense does not is reported
as not fooled: a minimal norm is only ever recorded for a point that is really misclassified."""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn

from bench import Attack, AttackOutput, AttackParams, Field, Number

from ._whitebox import attacked_model, ensemble_judge, gradient_warnings
from .minnorm import _settle


class GradientMinNormParams(AttackParams):
    norm: Literal["linf", "l2", "l1", "l0"] = "linf"
    eps: Number | None = Field(None, ge=0, description="also count a point robust unless fooled within this budget "
                                                       "(None: report norms only)")
    n_test: int = Field(0, ge=0, description="test images for this attack (0 = the profile's n_test; --n-test wins)")
    steps: int = Field(100, ge=1, description="optimisation steps (every step is one forward and one backward pass "
                                              "per image and EOT sample; FAB: one backward per class)")
    backward: str = Field("autograd", description="defense backward surrogate, e.g. 'smooth:4', 'top_u:30', 'identity'")
    eot_samples: int = Field(1, ge=1, description="stochastic passes whose logits are averaged per step (EOT)")


class EarlyStopParams(GradientMinNormParams):
    """FMN's and DDN's per-point early stop (attacks/_minnorm_loops.py)."""

    stop_patience: int = Field(10, ge=0, description="a point leaves the batch once it has been adversarial and its "
                                                     "best norm has not dropped by more than stop_rtol for this many "
                                                     "steps (0 = every point runs every step)")
    stop_rtol: Number = Field(0.001, ge=0, lt=1, description="the relative drop of a point's best norm that counts "
                                                            "as progress for stop_patience")
    stop_from: Number = Field(0.6, ge=0, le=1, description="no point leaves before this fraction of the steps (the "
                                                          "annealed step size is still large before it)")


def report_early_stop(ctx, saved: int) -> None:
    """The point-steps early stop saved, summed over the cell's batches (the manifest's info.early_stop)."""
    info = ctx.info.setdefault("early_stop", {"point_steps_saved": 0})
    info["point_steps_saved"] += saved


class EOTLogits(nn.Module):
    """The mean of `samples` stochastic forward passes: its gradient is the EOT gradient of the logits, and its
    prediction is the averaged one (each pass is counted by the PassCounter inside)."""

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        self.model, self.samples = model, samples

    def forward(self, x):
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)


class GradientMinNorm(Attack):
    """Base of the white-box minimum-norm plug-ins: implement `minimize(model, x, y, gen)` -> candidate points."""

    Params = GradientMinNormParams
    kind: ClassVar[str] = "min_norm"
    gradient_based = True
    salt: ClassVar[int] = 0  # each plug-in's own random stream
    # the loss whose gradient the minimisation follows, for the per-cell gradient checks: FMN and FAB step on the
    # logit margin (DDN overrides it: cross-entropy)
    loss_kind: ClassVar[str] = "cw"

    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def report(self, ctx) -> None:
        """Copy what the last `minimize` counted into the cell's manifest (ctx.info) and warnings; none by default."""

    def run(self, model, x, y, ctx):
        p = self.params
        gradient_warnings(ctx, p.backward, p.eot_samples)
        judge = ensemble_judge(ctx)
        # the libraries draw from torch's global RNG (FAB's restarts): fork it so the caller's stream is kept, and seed
        # it from the batch's first point, so batches do not all replay one stream (the libraries draw per batch,
        # not per point: a point's draw still depends on which points share its batch)
        devices = [ctx.device] if torch.device(ctx.device).type == "cuda" else []
        seeds = ctx.point_seeds(self.salt)
        with attacked_model(ctx, model, p.backward) as m, torch.random.fork_rng(devices=devices):
            torch.manual_seed((seeds[0] if seeds else ctx.seed * 1_000_003 + self.salt) % 2**63)
            target = EOTLogits(m, p.eot_samples).train(m.training) if p.eot_samples > 1 else m
            adv = self.minimize(target, x, y, ctx.generator(self.salt)).detach().to(x.dtype).clamp(0, 1)
            self.report(ctx)
            with torch.no_grad():
                if judge is not None:
                    fooled = judge(adv, y)
                else:  # a point the library left on the boundary is pushed just outward along its ray
                    adv, fooled = _settle(m, x, adv, y)
        x_adv = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), adv, x)
        return AttackOutput(x_adv=x_adv, fooled=fooled)
