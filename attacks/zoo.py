"""ZOO-ADAM (Chen et al. 2017; paper 000 A.8, SPEC §6): a score-based black-box L2 attack. Gradients of the
Carlini-Wagner objective are estimated by symmetric finite differences on a random set of coordinates per
iteration and applied with coordinate-wise ADAM in tanh space; a binary search tunes the trade-off constant c.

Batched over images and coordinates: per iteration every active image contributes its current point plus the
2 x `coordinates` perturbed copies, and all of them go through the model together (in chunks of
`query_batch` images if that is set)."""
from __future__ import annotations

from typing import ClassVar

import torch

from bench import Attack, AttackOutput, Field, Number, register_attack

from .minnorm import MinL2Params

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_TANH_SHRINK = 0.999999  # keeps arctanh finite at pixels 0 and 1 (as in the reference implementation)
_NO_BOUND = 1e10


class ZOOParams(MinL2Params):
    coordinates: int = Field(128, ge=1, description="coordinates estimated and updated per iteration")
    h: Number = Field(1e-4, gt=0, description="finite-difference step in tanh space")
    lr: Number = Field(0.01, gt=0, description="ADAM learning rate")
    iterations: int = Field(1000, ge=1, description="iterations per binary-search step")
    binary_steps: int = Field(9, ge=1, description="binary-search steps on the constant c")
    initial_const: Number = Field(0.01, gt=0, description="first c (loss = ||delta||^2 + c * margin loss)")
    confidence: Number = Field(0.0, ge=0, description="kappa: required margin of the wrong class")
    abort_early: bool = Field(True, description="stop an image's binary step when its loss stalls for a tenth of "
                                                "the iterations")
    query_batch: int = Field(0, ge=0, description="images per model forward (0 = auto: 8192 on a GPU, 256 on a "
                                                  "CPU, where larger batches run no faster)")


@register_attack("zoo")
class ZOO(Attack):
    """ZOO-ADAM: score-based zeroth-order L2 attack (finite differences, coordinate ADAM, tanh space, binary search on c)."""

    Params = ZOOParams
    kind: ClassVar[str] = "min_norm"

    def run(self, model, x, y, ctx):
        p = self.params
        if ctx.defense is not None and getattr(ctx.defense, "stochastic", False):
            ctx.warnings.append(f"zoo on stochastic defense '{ctx.defense.name}': each finite difference sees "
                                f"different randomness, so the gradient estimates are mostly noise")
        return AttackOutput(**_zoo(model, x, y, p, ctx.generator(salt=3)))


def _margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(z_y - max_{j != y} z_j + kappa, 0), success) on log-probabilities, as ZOO defines it; for logits this is
    the plain logit margin."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    real = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    other = logp.scatter(-1, y.unsqueeze(-1), float("-inf")).amax(-1)
    return (real - other + kappa).clamp(min=0), other - real >= max(kappa, 1e-12)


_CPU_CHUNK = 256  # measured: ResNet-32 on one CPU core runs ~30 % more images/s in chunks of 256 than of 800
_GPU_CHUNK = 8192  # 100 images x 257 queries at once would hold ~2 GB of ResNet-32 activations per layer


@torch.no_grad()
def _forward(model, images: torch.Tensor, chunk: int) -> torch.Tensor:
    if chunk <= 0:
        chunk = _CPU_CHUNK if images.device.type == "cpu" else _GPU_CHUNK
    if len(images) <= chunk:
        return model(images)
    return torch.cat([model(images[i:i + chunk]) for i in range(0, len(images), chunk)])


@torch.no_grad()
def _zoo(model, x: torch.Tensor, y: torch.Tensor, p: ZOOParams, gen: torch.Generator) -> dict:
    n, shape, dev = len(x), x.shape[1:], x.device
    dim = x[0].numel()
    k = min(p.coordinates, dim)
    w0 = torch.atanh((2 * x.flatten(1).double() - 1) * _TANH_SHRINK)
    x0 = (torch.tanh(w0) + 1) / 2  # the original as tanh space represents it
    mod = torch.zeros_like(w0)  # carried across binary steps, as in the reference implementation
    const = torch.full((n,), float(p.initial_const), dtype=torch.float64, device=dev)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _NO_BOUND)
    best_l2 = torch.full_like(const, float("inf"))  # over all binary steps
    best_adv = x.clone()
    queries = torch.zeros(n)
    period = max(1, p.iterations // 10)
    slots = torch.arange(k, device=dev)
    for _ in range(p.binary_steps):
        mt = torch.zeros_like(w0)
        vt = torch.zeros_like(w0)
        epoch = torch.ones_like(w0)
        step_l2 = torch.full_like(const, float("inf"))
        prev = torch.full_like(const, 1e6)
        active = torch.ones(n, dtype=torch.bool, device=dev)
        for it in range(p.iterations):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            r = rows.numel()
            coords = torch.rand(r, dim, generator=gen).topk(k, dim=1).indices.to(dev)
            w = w0[rows] + mod[rows]
            base = (torch.tanh(w) + 1) / 2
            l2_base = (base - x0[rows]).square().sum(1)
            w_c = w.gather(1, coords)
            x0_c = x0[rows].gather(1, coords)
            old_c = (base.gather(1, coords) - x0_c).square()
            v_plus = (torch.tanh(w_c + p.h) + 1) / 2
            v_minus = (torch.tanh(w_c - p.h) + 1) / 2
            # row layout per image: [current, +h on coord 0, -h on coord 0, +h on coord 1, ...]
            imgs = base.float().unsqueeze(1).repeat(1, 2 * k + 1, 1)
            ar = torch.arange(r, device=dev).unsqueeze(1)
            imgs[ar, 1 + 2 * slots, coords] = v_plus.float()
            imgs[ar, 2 + 2 * slots, coords] = v_minus.float()
            logits = _forward(model, imgs.view(-1, *shape), p.query_batch).view(r, 2 * k + 1, -1)
            queries[rows.cpu()] += 2 * k + 1
            f, success = _margin_loss(logits, y[rows].unsqueeze(1).expand(r, 2 * k + 1), p.confidence)
            c = const[rows].unsqueeze(1)
            l2_plus = l2_base.unsqueeze(1) - old_c + (v_plus - x0_c).square()
            l2_minus = l2_base.unsqueeze(1) - old_c + (v_minus - x0_c).square()
            loss_now = l2_base + c.squeeze(1) * f[:, 0]
            grad = ((l2_plus + c * f[:, 1::2]) - (l2_minus + c * f[:, 2::2])) / (2 * p.h)

            # the current point (before this update) is what the reference records and early-abort checks
            hit = success[:, 0]
            better = hit & (l2_base < step_l2[rows])
            step_l2[rows[better]] = l2_base[better]
            record = hit & (l2_base < best_l2[rows])
            best_l2[rows[record]] = l2_base[record]
            best_adv[rows[record]] = imgs[record, 0].view(-1, *shape).to(x.dtype)
            if p.abort_early and it % period == 0:
                stalled = loss_now > prev[rows] * 0.9999
                prev[rows] = loss_now
                active[rows[stalled]] = False

            # coordinate-wise ADAM with per-coordinate bias correction
            m_c = _BETA1 * mt[rows].gather(1, coords) + (1 - _BETA1) * grad
            v_c = _BETA2 * vt[rows].gather(1, coords) + (1 - _BETA2) * grad.square()
            e_c = epoch[rows].gather(1, coords)
            corr = (1 - _BETA2 ** e_c).sqrt() / (1 - _BETA1 ** e_c)
            upd = mod[rows].gather(1, coords) - p.lr * corr * m_c / (v_c.sqrt() + _ADAM_EPS)
            for state, value in ((mt, m_c), (vt, v_c), (epoch, e_c + 1), (mod, upd)):
                sub = state[rows]
                sub.scatter_(1, coords, value)
                state[rows] = sub

        # binary search on c: halve towards the known-good constant, or grow tenfold until one works
        won = torch.isfinite(step_l2)
        upper = torch.where(won, torch.minimum(upper, const), upper)
        lower = torch.where(won, lower, torch.maximum(lower, const))
        bounded = upper < _NO_BOUND / 10
        const = torch.where(bounded, (lower + upper) / 2, torch.where(won, const, const * 10))
    fooled = torch.isfinite(best_l2)
    return {"x_adv": best_adv, "fooled": fooled, "queries": queries}
