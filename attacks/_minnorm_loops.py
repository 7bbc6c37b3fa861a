"""FMN's and DDN's optimisation loops with per-point early stop.

foolbox's `run` loops (fast_minimum_norm.py, ddn.py of foolbox 3.3.4) step every point for every step. These are the
same updates, step by step (cosine-annealed step size and gamma, the same epsilon rules, the same projections: the
attack object's own `project` and `mid_points`, so attacks/fmn.py's fixed L2 and L0 projections apply), run on the
points still in the batch. A point leaves once it has been adversarial and its best norm has not dropped by more
than `rtol` (relative) for `patience` steps, from step `start` on (before it the step size is still large, and a
point can sit on a plateau for 30 steps and then drop its norm by a fifth: measured on the quick PGD-AT model's
FMN-L2, docs/curves.md): like the PGD engine, which attacks only the points not yet fooled,
later steps cost only the points still improving. Each point keeps its own schedule position (the global step
index), so a point that stays follows exactly the trajectory it would follow without early stop, and a point that
leaves returns the best norm it had reached: early stop can only keep a norm at or above the full run's, never
below. `patience = 0` switches early stop off (every point runs every step)."""
from __future__ import annotations

import math

import eagerpy as ep
import torch
import torch.nn.functional as F

_DUAL = {math.inf: 1, 2: 2, 1: math.inf}


def lp_norm(delta: torch.Tensor, p: float) -> torch.Tensor:
    flat = delta.flatten(1)
    if p == 0:
        return (flat != 0).sum(1).to(delta.dtype)
    return flat.norm(p=p, dim=1)


class EarlyStop:
    """Which points may leave: adversarial once, and no relative drop of their best norm above `rtol` for
    `patience` steps, from step `start` on."""

    def __init__(self, n: int, patience: int, rtol: float, device, start: int = 0):
        self.patience, self.rtol, self.start = patience, rtol, start
        self.ref = torch.full((n,), math.inf, device=device)  # the best norm at its last real drop
        self.since = torch.zeros(n, dtype=torch.long, device=device)  # the step of that drop

    def stays(self, rows: torch.Tensor, best: torch.Tensor, found: torch.Tensor, step: int) -> torch.Tensor:
        """Bool mask over `rows`: True for the points that stay in the batch after `step`."""
        dropped = best < self.ref[rows] * (1 - self.rtol)
        self.ref[rows] = torch.where(dropped, best, self.ref[rows])
        self.since[rows] = torch.where(dropped, torch.full_like(self.since[rows], step), self.since[rows])
        if not self.patience or step < self.start:
            return torch.ones_like(found)
        return ~(found & (step - self.since[rows] >= self.patience))


def _eager(fn, *tensors):
    return fn(*[ep.astensor(t) for t in tensors]).raw


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def _margin_grad(model, x_adv: torch.Tensor, y: torch.Tensor):
    """(logits, margin z_y - max_{j != y} z_j, its gradient w.r.t. the input negated: the direction that lowers it)."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    other = logits.detach().scatter(1, y[:, None], -math.inf).argmax(1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, other[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(-margin.sum(), x_adv)
    return logits.detach(), margin.detach(), grad


@torch.no_grad()
def boundary_start(attack, model, x: torch.Tensor, y: torch.Tensor, x1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """foolbox's FMN start from adversarial points x1: binary search along the attack's own mid_points path for the
    point nearest x that is still adversarial (x1 itself is adversarial by the caller's check)."""
    lower = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    upper = torch.ones_like(lower)
    for _ in range(steps):
        mid = (lower + upper) / 2
        hit = model(_eager(lambda a, b, e: attack.mid_points(a, b, e, (0, 1)), x, x1, mid)).argmax(1) != y
        lower, upper = torch.where(hit, lower, mid), torch.where(hit, mid, upper)
    return _eager(lambda a, b, e: attack.mid_points(a, b, e, (0, 1)), x, x1, upper)


def fmn(attack, model, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None, patience: int,
        rtol: float, stop_from: float = 0.0) -> tuple[torch.Tensor, int]:
    """FMN (foolbox's FMNAttackLp.run) from `start` (x where None; a point equal to x starts from x), untargeted.
    `stop_from`: the fraction of the steps before which no point leaves. Returns (x + best delta, the number of
    point-steps early stop saved)."""
    p = attack.p
    delta = torch.zeros_like(x) if start is None else (start - x)
    n, steps = len(x), attack.steps
    if p != 0:
        epsilon = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        worst = lp_norm(torch.maximum(x, 1 - x), p)
    else:
        epsilon = torch.clamp(lp_norm(delta, 0), min=1)
        worst = torch.full((n,), float(x[0].numel()), device=x.device, dtype=x.dtype)
    best_lp, best_delta = worst.clone(), delta.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    stop = EarlyStop(n, patience, rtol, x.device, start=math.ceil(stop_from * steps))
    rows, saved = torch.arange(n, device=x.device), 0
    for i in range(steps):
        stepsize = _cosine(attack.max_stepsize, attack.min_stepsize, i, steps)
        gamma = _cosine(attack.gamma, 0.001, i, steps)
        xa, da, ya = x[rows], delta[rows], y[rows]
        logits, margin, grad = _margin_grad(model, xa + da, ya)
        adv = logits.argmax(1) != ya
        size = lp_norm(da, p)
        both = adv & (size <= best_lp[rows])
        found[rows] |= adv
        best_lp[rows] = torch.where(both, size, best_lp[rows])
        best_delta[rows[both]] = da[both]
        eps, best_size = epsilon[rows], lp_norm(best_delta[rows], p)
        if p != 0:
            to_boundary = margin.abs() / grad.flatten(1).norm(p=_DUAL[p], dim=1)
            eps = torch.where(adv, torch.minimum(eps * (1 - gamma), best_size),
                              torch.where(found[rows], eps * (1 + gamma), size + to_boundary))
        else:
            shrink = torch.minimum(eps - 1, (eps * (1 - gamma)).long().to(eps.dtype))
            grow = torch.maximum(eps + 1, (eps * (1 + gamma)).long().to(eps.dtype))
            eps = torch.clamp(torch.where(adv, torch.minimum(shrink, best_size), grow), min=1)
        eps = torch.minimum(eps, worst[rows])
        epsilon[rows] = eps
        unit = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (x.dim() - 1))
        da = da + stepsize * unit
        da = _eager(attack.project, xa + da, xa, eps) - xa
        delta[rows] = (xa + da).clamp(0, 1) - xa
        keep = stop.stays(rows, best_lp[rows], found[rows], i)
        rows = rows[keep]
        saved += int((~keep).sum()) * (steps - i - 1)
        if not len(rows):
            break
    return x + best_delta, saved


def ddn(model, x: torch.Tensor, y: torch.Tensor, steps: int, init_epsilon: float, gamma: float, patience: int,
        rtol: float, stop_from: float = 0.0, until_found: bool = False) -> tuple[torch.Tensor, int]:
    """DDN (foolbox's DDNAttack.run), untargeted, L2, early stop as in `fmn`; `until_found`: instead, a point
    leaves at the first step it is adversarial (a starting point for FMN, not a minimal one). Returns (x + best
    delta, the point-steps early stop saved).
    A zero gradient is replaced by Gaussian noise, as foolbox does (from torch's global RNG, which the plug-in
    seeds per batch)."""
    n = len(x)
    delta = torch.zeros_like(x)
    epsilon = torch.full((n,), float(init_epsilon), device=x.device, dtype=x.dtype)
    worst = lp_norm(torch.maximum(x, 1 - x), 2)
    best_l2, best_delta = worst.clone(), delta.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    stop = EarlyStop(n, patience, rtol, x.device, start=math.ceil(stop_from * steps))
    rows, saved = torch.arange(n, device=x.device), 0
    shape = [1] * (x.dim() - 1)
    for i in range(steps):
        stepsize = _cosine(1.0, 0.01, i, steps)
        xa, da, ya = x[rows], delta[rows], y[rows]
        x_adv = (xa + da).detach().requires_grad_(True)
        logits = model(x_adv)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, ya, reduction="sum"), x_adv)
        logits = logits.detach()
        zero = grad.flatten(1).norm(dim=1) == 0
        noise = torch.randn(grad.shape, dtype=grad.dtype, device=grad.device)  # drawn every step, as foolbox does
        grad = torch.where(zero.view(-1, *shape), noise, grad)
        grad = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *shape)
        adv = logits.argmax(1) != ya
        size = lp_norm(da, 2)
        both = adv & (size <= best_l2[rows])
        found[rows] |= adv
        best_l2[rows] = torch.where(both, size, best_l2[rows])
        best_delta[rows[both]] = da[both]
        da = da + stepsize * grad
        eps = torch.minimum(epsilon[rows] * torch.where(adv, 1.0 - gamma, 1.0 + gamma), worst[rows])
        epsilon[rows] = eps
        da = da * (eps / lp_norm(da, 2)).view(-1, *shape)
        delta[rows] = (xa + da).clamp(0, 1) - xa
        keep = ~found[rows] if until_found else stop.stays(rows, best_l2[rows], found[rows], i)
        rows = rows[keep]
        saved += int((~keep).sum()) * (steps - i - 1)
        if not len(rows):
            break
    return x + best_delta, saved
