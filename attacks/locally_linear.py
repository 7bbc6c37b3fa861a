"""Locally linear attacks (002 §8.3 of the spec): model each logit margin y_i − y_t as linear around x, with
w_eq = ∇ₓ(y_i − y_t) taken through the defense (its backward surrogate picks the front end's gradient mode: 'identity'
gives the semi-white-box A_SW = ε·sgn(w_eq), the front end's own projection gives the white-box A_W =
ε·sgn(P_K(w_eq))), step along its sign, and keep the best of the L − 1 target classes.

FGSM steps along sgn(∇ CE), a softmax-weighted mix of every logit's gradient; this attack attacks each margin
directly, so on a binary model the two coincide and on a multiclass one it can find a margin the mix hides.

The iterative form e_{k+1} = clip_ε(e_k + A(x + e_k, δ)) is the PGD step of bench's engine (`bench.step`: sign
step, projection onto the Linf ball ∩ image box) on the margin of one target; per target the first fooling
iterate is kept, otherwise the last. Across targets a point counts as fooled if any target's point fools the model
(the paper keeps the largest margin y_i(x_i) − y_t(x_i), which fools whenever some own margin is positive; a
candidate that fools through a third class counts too, so this is never weaker); a robust point returns the
candidate with the largest own margin. Points fooled by one target are not attacked for the next."""
from __future__ import annotations

from typing import Literal

import torch

from bench import (Attack, AttackOutput, AttackParams, Field, Number, PGDSettings, StepSize, enforce_budget,
                   register_attack, step, step_value)

from ._whitebox import attacked_model, gradient_warnings


class LocallyLinearParams(AttackParams):
    norm: Literal["linf"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description="Linf budget (pixels in [0, 1]; 002's MNIST tables: 0.2)")
    steps: int = Field(1, ge=1, description="1 = the single-step attack; 002's iterative one: 100 steps of 0.05")
    step_size: StepSize = Field("eps", description="δ: absolute (\"0.05\") or relative to eps (\"eps\", \"eps/4\")")
    backward: str = Field("autograd", description="defense backward surrogate (the wavelet front end: 'identity' "
                                                  "= semi-white-box, 'projection' = white-box, 'iterated:20')")


def _margin(logits: torch.Tensor, y: torch.Tensor, target: int) -> torch.Tensor:
    return logits[:, target] - logits.gather(1, y[:, None]).squeeze(1)


@register_attack("locally_linear")
class LocallyLinear(Attack):
    """Locally linear attack of 002: signed steps on each logit margin y_i − y_t, best of the L − 1 targets."""

    Params = LocallyLinearParams
    gradient_based = True
    loss_kind = "cw"  # it steps on logit margins: the per-cell gradient checks probe the margin's gradient

    def settings(self) -> PGDSettings:
        p = self.params
        return PGDSettings(norm="linf", eps=float(p.eps), steps=p.steps,
                           step_size=step_value(p.step_size, p.eps, p.steps), random_start=False)

    def run(self, model, x, y, ctx):
        p, s = self.params, self.settings()
        gradient_warnings(ctx, p.backward, 1)
        best = x.clone()
        best_margin = torch.full((len(x),), float("-inf"), device=x.device, dtype=torch.float64)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with attacked_model(ctx, model, p.backward) as m:
            with torch.no_grad():
                classes = m(x[:1]).shape[1]
            for target in range(classes):
                rows = ((y != target) & ~fooled).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                x_t, hit, margin = self._one_target(m, x[rows], y[rows], target, s)
                keep = hit | (~fooled[rows] & (margin > best_margin[rows]))
                best[rows[keep]] = x_t[keep]
                best_margin[rows[keep]] = margin[keep]
                fooled[rows[hit]] = True
            changed = enforce_budget(best, x, "linf", s.eps)  # x + delta may round just past the box
            if changed.any():
                with torch.no_grad():
                    fooled[changed] = m(best[changed]).argmax(1) != y[changed]
        return AttackOutput(x_adv=best, fooled=fooled)

    @staticmethod
    def _one_target(m, x, y, target: int, s: PGDSettings):
        """Signed steps on y_target − y_t from x: (point, fooled, its own margin) per row; a row leaves at its first
        fooling iterate."""
        out, hit = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        margin = torch.full((len(x),), float("-inf"), dtype=torch.float64, device=x.device)
        alive = torch.arange(len(x), device=x.device)
        delta = torch.zeros_like(x)
        for t in range(s.steps + 1):
            last = t == s.steps
            x_in = (x[alive] + delta).detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = m(x_in)
                own = _margin(logits, y[alive], target)
            now = logits.detach().argmax(1) != y[alive]
            out[alive] = x_in.detach()
            margin[alive] = own.detach().double()
            hit[alive[now]] = True
            if last:
                break
            (g,) = torch.autograd.grad(own.sum(), x_in)
            go = ~now
            alive, delta, g = alive[go], delta[go], g[go]
            if alive.numel() == 0:
                break
            delta = step(delta, g, x[alive], s).detach()
        return out, hit, margin
