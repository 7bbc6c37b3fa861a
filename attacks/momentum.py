"""Momentum iterative FGSM (Dong et al. 2018; 002 Tables II and V use CleverHans v2.1.0's): the sign step follows a
running sum of L1-normalised gradients, g_{k+1} = μ·g_k + ∇/‖∇‖₁, instead of the current gradient alone. The step
and the Linf projection are bench's PGD engine's (`bench.step` on the momentum direction); the first fooling iterate
of each point is kept, otherwise the last."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from bench import (Attack, AttackOutput, AttackParams, Field, Number, PGDSettings, StepSize, enforce_budget,
                   register_attack, step, step_value)

from ._whitebox import attacked_model, gradient_warnings


class MomentumParams(AttackParams):
    norm: Literal["linf"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description="Linf budget (pixels in [0, 1])")
    steps: int = Field(10, ge=1, description="iterations (CleverHans default 10; 002's tables: 1000 of 0.01)")
    step_size: StepSize = Field("eps/5", description="absolute or relative to eps (CleverHans default 0.06 at 0.3)")
    decay: Number = Field(1.0, ge=0, description="momentum decay μ (CleverHans default 1.0)")
    backward: str = Field("autograd", description="defense backward surrogate (e.g. 'identity')")


@register_attack("mi_fgsm")
class MomentumIterativeFGSM(Attack):
    """Momentum iterative FGSM: sign steps along a decayed sum of L1-normalised CE gradients, from the clean point."""

    Params = MomentumParams
    gradient_based = True

    def run(self, model, x, y, ctx):
        p = self.params
        s = PGDSettings(norm="linf", eps=float(p.eps), steps=p.steps, step_size=step_value(p.step_size, p.eps, p.steps),
                        random_start=False)
        gradient_warnings(ctx, p.backward, 1)
        out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        alive = torch.arange(len(x), device=x.device)
        delta, momentum = torch.zeros_like(x), torch.zeros_like(x)
        with attacked_model(ctx, model, p.backward) as m:
            for t in range(s.steps + 1):
                last = t == s.steps
                x_in = (x[alive] + delta).detach().requires_grad_(not last)
                with torch.set_grad_enabled(not last):
                    logits = m(x_in)
                hit = logits.detach().argmax(1) != y[alive]
                out[alive] = x_in.detach()
                fooled[alive[hit]] = True
                if last:
                    break
                (g,) = torch.autograd.grad(F.cross_entropy(logits, y[alive], reduction="sum"), x_in)
                l1 = g.flatten(1).abs().sum(1).clamp_min(1e-30).view(-1, *([1] * (g.dim() - 1)))
                momentum = p.decay * momentum + g / l1
                keep = ~hit
                alive, delta, momentum = alive[keep], delta[keep], momentum[keep]
                if alive.numel() == 0:
                    break
                delta = step(delta, momentum, x[alive], s).detach()
            changed = enforce_budget(out, x, "linf", s.eps)
            if changed.any():
                with torch.no_grad():
                    fooled[changed] = m(out[changed]).argmax(1) != y[changed]
        return AttackOutput(x_adv=out, fooled=fooled)
