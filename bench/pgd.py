"""The one projected-gradient engine behind every white-box bounded attack (PGD, FGSM, BIM, CW-loss PGD,
EOT, BPDA through a defense's surrogates).

Per-sample worst case: a point is robust only if no restart fooled it; the first fooling iterate is kept,
otherwise the highest-loss one. The forward that computes the loss also decides which points are fooled, and
fooled points leave the batch at once (early exit), so later steps and restarts cost only the robust points.
Restarts may be run k at a time as replicas along the batch dimension."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PGDSettings:
    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 40
    step_size: float = 1 / 255
    restarts: int = 1
    batch_restarts: int = 1
    loss: str = "ce"
    kappa: float = 50.0
    random_start: bool = True
    eot_samples: int = 1
    eot_mode: str = "mean"
    early_stop: bool = True
    l1_sparsity: float = 0.99
    l1_step: str = "slide"
    amp: bool = False


# ---------------------------------------------------------------- losses (per sample, to be maximised)

def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y (positive iff misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, kappa: float) -> torch.Tensor:
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "cw":  # -ReLU(z_y - max_{j!=y} z_j + kappa), up to a constant
        return margin(logits, y).clamp(max=kappa)
    raise ValueError(f"unknown loss {kind!r}")


# ---------------------------------------------------------------- norm geometry

def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project_l1_box(v: torch.Tensor, eps: float, lo: torch.Tensor, hi: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """Exact Euclidean projection of each v onto {||d||_1 <= eps} ∩ [lo, hi] (lo <= 0 <= hi).
    KKT: d = clip(soft_threshold(v, lam), lo, hi) with the smallest lam >= 0 meeting the budget (bisection)."""
    def shrink(lam):
        return (v.sign() * (v.abs() - _view(lam, v)).clamp(min=0)).clamp(lo, hi)

    d = shrink(torch.zeros(v.shape[0], device=v.device, dtype=v.dtype))
    over = d.flatten(1).abs().sum(1) > eps
    if not over.any():
        return d
    low = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    high = v.flatten(1).abs().amax(1)
    for _ in range(iters):
        mid = (low + high) / 2
        too_big = shrink(mid).flatten(1).abs().sum(1) > eps
        low = torch.where(too_big, mid, low)
        high = torch.where(too_big, high, mid)
    return torch.where(_view(over, v), shrink(high), d)


def random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    shape, dim = x.shape, x[0].numel()
    if norm == "linf":
        delta = (torch.rand(shape, generator=gen) * 2 - 1) * eps
    else:
        if norm == "l2":
            direction = torch.randn(shape, generator=gen)
            direction = direction / _view(direction.flatten(1).norm(dim=1), direction)
        else:  # l1: Laplace directions normalised on the L1 sphere
            direction = torch.distributions.Laplace(0.0, 1.0).sample(shape)
            direction = direction / _view(direction.flatten(1).abs().sum(1), direction)
        radius = torch.rand(shape[0], generator=gen) ** (1.0 / dim) * eps
        delta = direction * _view(radius, direction)
    delta = delta.to(x.device)
    return (x + delta).clamp(0, 1) - x


def step(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, s: PGDSettings) -> torch.Tensor:
    """One ascent step followed by the exact projection onto the norm ball ∩ the image box."""
    lo, hi = -x, 1 - x
    if s.norm == "linf":
        return (delta + s.step_size * grad.sign()).clamp(-s.eps, s.eps).clamp(lo, hi)
    if s.norm == "l2":
        g = grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        d = delta + s.step_size * g
        n = d.flatten(1).norm(dim=1)
        d = d * _view((s.eps / n.clamp_min(1e-12)).clamp(max=1.0), d)
        return d.clamp(lo, hi)
    if s.norm == "l1":
        if s.l1_step == "dense":  # the authors' weaker variant, kept for comparison only
            g = grad / _view(grad.flatten(1).abs().sum(1).clamp_min(1e-12), grad)
            d = delta + s.step_size * g
            n = d.flatten(1).abs().sum(1)
            return (d * _view((s.eps / n.clamp_min(1e-12)).clamp(max=1.0), d)).clamp(lo, hi)
        # SLIDE: move only the top (1 - sparsity) fraction of coordinates that can still move
        at_edge = ((grad > 0) & (delta >= hi - 1e-7)) | ((grad < 0) & (delta <= lo + 1e-7))
        g = grad.masked_fill(at_edge, 0.0)
        a = g.flatten(1).abs()
        k = max(1, int(round((1 - s.l1_sparsity) * a.shape[1])))
        thresh = a.topk(k, dim=1).values[:, -1:]
        e = (g.sign() * (a >= thresh).view_as(g).float()).view_as(g)
        e = e / _view(e.flatten(1).abs().sum(1).clamp_min(1e-12), e)
        return project_l1_box(delta + s.step_size * e, s.eps, lo, hi)
    raise ValueError(f"unknown norm {s.norm!r}")


# ---------------------------------------------------------------- the engine

def _grad(model, x, y, delta, s: PGDSettings):
    """Loss, logits of the first pass and the (EOT-averaged) input gradient at x + delta."""
    delta = delta.detach().requires_grad_(True)
    total = torch.zeros_like(delta)
    first_logits = first_loss = None
    for i in range(s.eot_samples):
        with torch.autocast(x.device.type, enabled=s.amp and x.device.type == "cuda"):
            logits = model(x + delta)
        loss = attack_loss(logits, y, s.loss, s.kappa)
        (g,) = torch.autograd.grad(loss.sum(), delta)
        if s.eot_mode == "normalized":
            g = g / _view(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
        total += g
        if i == 0:
            first_logits, first_loss = logits.detach().float(), loss.detach()
    return first_loss, first_logits, total / s.eot_samples


def run_pgd(model, x: torch.Tensor, y: torch.Tensor, s: PGDSettings, gen: torch.Generator,
            judge=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x_adv, fooled). `judge(x_adv, y) -> fooled` replaces the step forward's verdict for
    stochastic models (e.g. an ensemble); it is then applied once at the end of each restart."""
    n = x.shape[0]
    best = x.clone()
    best_loss = torch.full((n,), float("-inf"), device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    rounds = (s.restarts + s.batch_restarts - 1) // s.batch_restarts
    for r in range(rounds):
        replicas = min(s.batch_restarts, s.restarts - r * s.batch_restarts)
        alive = (~fooled).nonzero().squeeze(1)
        if alive.numel() == 0:
            break
        owner = alive.repeat(replicas)  # row -> sample index
        xa, ya = x[owner], y[owner]
        use_random = s.random_start or r > 0 or replicas > 1
        delta = random_start(xa, s.norm, s.eps, gen) if use_random else torch.zeros_like(xa)
        if replicas > 1 and not s.random_start:
            delta[: alive.numel()] = 0  # the first replica of the first round keeps the zero start
        for t in range(s.steps + 1):
            last = t == s.steps
            if last:  # the final iterate only needs a verdict, not a gradient
                with torch.no_grad(), torch.autocast(x.device.type, enabled=s.amp and x.device.type == "cuda"):
                    logits = model(xa + delta).float()
                loss = attack_loss(logits, ya, s.loss, s.kappa)
            else:
                loss, logits, g = _grad(model, xa, ya, delta, s)
            x_now = (xa + delta).detach()
            upd = (loss > best_loss[owner]) & ~fooled[owner]
            # replicas of one sample may improve together; whichever write wins is a valid keeper
            best_loss[owner[upd]] = loss[upd]
            best[owner[upd]] = x_now[upd]
            if judge is None:
                hit = (logits.argmax(1) != ya) & ~fooled[owner]
                if hit.any():
                    best[owner[hit]] = x_now[hit]
                    fooled[owner[hit]] = True
                keep = ~fooled[owner]
                if s.early_stop and not keep.all():
                    owner, xa, ya, delta = owner[keep], xa[keep], ya[keep], delta[keep]
                    if not last:
                        g = g[keep]
                    if owner.numel() == 0:
                        break
            if not last:
                delta = step(delta, g, xa, s).detach()
        if judge is not None:
            fooled |= judge(best, y)
    return best, fooled
