"""The one projected-gradient engine behind every white-box bounded attack (PGD, FGSM, BIM, CW-loss PGD,
EOT, BPDA through a defense's surrogates).

Per-sample worst case: a point is robust only if no restart fooled it; the first fooling iterate is kept,
otherwise the highest-loss one. The forward that computes the loss also decides which points are fooled, and
fooled points leave the batch at once (early exit), so later steps and restarts cost only the robust points.
Restarts may be run k at a time as replicas along the batch dimension.

Gradient strength: the loss is computed in float64 from the logits and its logit-gradient is rescaled per
sample before the backward pass, so an over-confident model whose float32 softmax saturates (gradient exactly
zero, the classic accidental gradient masking) still yields the exact ascent direction. Every step used here
(sign, L2-normalised, top-k sparse) is invariant to that per-sample scale."""
from __future__ import annotations

import contextlib
import math
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
    early_stop: bool = True  # False = the reference cost: every point runs every step of every restart
    l1_sparsity: float = 0.99
    l1_step: str = "slide"
    amp: bool = False  # CUDA bfloat16 autocast; points it calls fooled are confirmed in fp32


# ---------------------------------------------------------------- losses (per sample, to be maximised)

def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y (positive iff misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, kappa: float) -> torch.Tensor:
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
    KKT: d = clip(soft_threshold(v, lam), lo, hi) with the smallest lam >= 0 meeting the budget (bisection;
    the returned point always uses the feasible end of the bracket)."""
    def shrink(vv, lam, l, h):
        return (vv.sign() * (vv.abs() - _view(lam, vv)).clamp(min=0)).clamp(l, h)

    d = v.clamp(lo, hi)
    over = (d.flatten(1).abs().sum(1) > eps).nonzero().squeeze(1)
    if over.numel() == 0:
        return d
    vo, lo_o, hi_o = v[over], lo[over], hi[over]
    low = torch.zeros(over.numel(), device=v.device, dtype=v.dtype)
    high = vo.flatten(1).abs().amax(1)
    for _ in range(iters):
        mid = (low + high) / 2
        too_big = shrink(vo, mid, lo_o, hi_o).flatten(1).abs().sum(1) > eps
        low = torch.where(too_big, mid, low)
        high = torch.where(too_big, high, mid)
    d[over] = shrink(vo, high, lo_o, hi_o)
    return d


def dead_gradients(g: torch.Tensor, vanishing: float) -> torch.Tensor:
    """Per sample: an input gradient that is NaN/Inf somewhere, exactly zero or vanishing (L1 < vanishing * d)."""
    flat = g.detach().flatten(1).double()
    finite = torch.isfinite(flat).all(1)
    l1 = flat.abs().nan_to_num(0.0, posinf=0.0).sum(1)
    return ~finite | (l1 <= vanishing * flat.shape[1])


class Norm:
    """A threat model's geometry, split as Foolbox splits it: a random start, an ascent step, a projection
    (onto the ball ∩ the image box [lo, hi] = [-x, 1 - x]), plus the norm a checker measures."""

    name = ""
    sums = True  # a sum over coordinates: the float rounding of x + delta can push the measured norm over eps

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ball_draw(self, shape, eps: float, gen: torch.Generator) -> torch.Tensor:
        """Uniform in the ball: a uniform direction on the sphere, then a radius with density ∝ r^(dim-1)."""
        direction = self.sphere(shape, gen)
        radius = torch.rand(shape[0], generator=gen) ** (1.0 / math.prod(shape[1:])) * eps
        return direction * _view(radius, direction)

    def sphere(self, shape, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def ascent(self, delta, grad, lo, hi, s: PGDSettings) -> torch.Tensor:
        raise NotImplementedError

    def project(self, d, lo, hi, s: PGDSettings) -> torch.Tensor:
        raise NotImplementedError

    def step(self, delta, grad, x, s: PGDSettings) -> torch.Tensor:
        lo, hi = -x, 1 - x
        return self.project(self.ascent(delta, grad, lo, hi, s), lo, hi, s)


def _radius(s: PGDSettings) -> float:
    # L2/L1: project onto a ball smaller by 1e-6 (relative) so the rounding of x + delta, summed over
    # thousands of coordinates, does not push the measured norm over eps
    return s.eps * (1 - 1e-6)


def _rescale(d, n, radius):
    """d shrunk per sample (never grown) to size `radius`, n being its size."""
    return d * _view((radius / n.clamp_min(1e-30)).clamp(max=1.0), d)


class LinfNorm(Norm):
    name, sums = "linf", False  # a coordinate's rounding error (< 1e-7) cannot accumulate in the max

    def measure(self, delta):
        return delta.flatten(1).abs().amax(1)

    def ball_draw(self, shape, eps, gen):  # the cube: uniform per coordinate
        return (torch.rand(shape, generator=gen) * 2 - 1) * eps

    def ascent(self, delta, grad, lo, hi, s):
        return delta + s.step_size * grad.sign()

    def project(self, d, lo, hi, s):  # the ball and the box are both boxes: one clamp
        return torch.minimum(torch.maximum(d, lo.clamp(min=-s.eps)), hi.clamp(max=s.eps))


class L2Norm(Norm):
    name = "l2"

    def measure(self, delta):
        return delta.flatten(1).norm(p=2, dim=1)

    @staticmethod
    def size(v):  # the engine's spelling (p="fro"), kept so its results stay bitwise what they were
        return v.flatten(1).norm(dim=1)

    def sphere(self, shape, gen):  # an isotropic Gaussian's direction is uniform on the sphere
        direction = torch.randn(shape, generator=gen)
        return direction / _view(self.size(direction), direction)

    def ascent(self, delta, grad, lo, hi, s):
        return delta + s.step_size * (grad / _view(self.size(grad).clamp_min(1e-30), grad))

    def project(self, d, lo, hi, s):
        # rescale, then clip: coordinate clipping only shrinks the L2 norm, so the result stays feasible
        return _rescale(d, self.size(d), _radius(s)).clamp(lo, hi)


class L1Norm(Norm):
    """SLIDE step with the exact projection onto the L1 ball ∩ box; s.l1_step == "dense" selects the authors'
    weaker variant (L1-normalised gradient, rescale then clip), kept for comparison only."""

    name = "l1"

    def measure(self, delta):
        return delta.flatten(1).abs().sum(1)

    size = measure

    def sphere(self, shape, gen):  # i.i.d. Laplace coordinates normalised onto the L1 sphere are uniform on it
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        direction = sign * torch.empty(shape).exponential_(generator=gen)
        return direction / _view(self.size(direction), direction)

    def ascent(self, delta, grad, lo, hi, s):
        if s.l1_step == "dense":
            return delta + s.step_size * (grad / _view(self.size(grad).clamp_min(1e-30), grad))
        # SLIDE: move only the top (1 - sparsity) fraction of the coordinates that can still move
        at_edge = ((grad > 0) & (delta >= hi - 1e-7)) | ((grad < 0) & (delta <= lo + 1e-7))
        g = grad.masked_fill(at_edge, 0.0)
        a = g.flatten(1).abs()
        k = max(1, int(round((1 - s.l1_sparsity) * a.shape[1])))
        thresh = a.topk(k, dim=1).values[:, -1:]
        e = (g.sign().flatten(1) * (a >= thresh)).view_as(g)
        return delta + s.step_size * (e / _view(self.size(e).clamp_min(1e-30), e))

    def project(self, d, lo, hi, s):
        if s.l1_step == "dense":
            return _rescale(d, self.size(d), _radius(s)).clamp(lo, hi)
        return project_l1_box(d, _radius(s), lo, hi)


NORMS: dict[str, Norm] = {n.name: n for n in (LinfNorm(), L2Norm(), L1Norm())}


def norm_of(name: str) -> Norm:
    try:
        return NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}") from None


def random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator,
                 row_seeds: list[int] | None = None) -> torch.Tensor:
    """A uniform draw from the norm ball (clipped to the image box), from the seeded CPU generator; with
    `row_seeds`, each row from its own generator instead (a point's start then does not depend on its batch)."""
    if row_seeds is None:
        delta = _ball_draw(x.shape, norm, eps, gen)
    else:
        rows = [_ball_draw((1, *x.shape[1:]), norm, eps, torch.Generator().manual_seed(s % 2**63)) for s in row_seeds]
        delta = torch.cat(rows) if rows else torch.zeros(x.shape)
    delta = delta.to(x.device, x.dtype)
    return (x + delta).clamp(0, 1) - x


def _ball_draw(shape, norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    return norm_of(norm).ball_draw(shape, eps, gen)


def step(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, s: PGDSettings) -> torch.Tensor:
    """One ascent step followed by the projection onto the norm ball ∩ the image box."""
    return norm_of(s.norm).step(delta, grad, x, s)


def enforce_budget(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """In place: clip to the box and shrink the rare rows whose *measured* L2/L1 norm ||x_adv - x|| exceeds eps
    by the float rounding of x + delta summed over many coordinates, so box and budget hold exactly as any
    checker computes them. Returns a bool mask of the rows that changed."""
    nrm = norm_of(norm)
    boxed = x_adv.clamp(0, 1)  # x + (1 - x) may round above 1
    changed = (boxed != x_adv).flatten(1).any(1)
    x_adv.copy_(boxed)
    if not nrm.sums:
        return changed
    for _ in range(8):
        delta = x_adv - x
        over = nrm.measure(delta) > eps
        if not over.any():
            break
        n = nrm.measure(delta[over])
        x_adv[over] = (x[over] + delta[over] * _view(eps / n * (1 - 1e-6), delta[over])).clamp(0, 1)
        changed |= over
    return changed


# ---------------------------------------------------------------- the engine

def _autocast(x: torch.Tensor, s: PGDSettings):
    if s.amp and x.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _grad(model, x_in: torch.Tensor, y, s: PGDSettings):
    """Loss, logits of the first pass and the (EOT-averaged) input gradient at x_in (which requires grad)."""
    # EOT 'mean' averages raw gradients, whose relative scales across passes matter: no per-pass rescale
    rescale = not (s.eot_samples > 1 and s.eot_mode == "mean")
    total = first_logits = first_loss = None
    for i in range(s.eot_samples):
        with _autocast(x_in, s):
            logits = model(x_in)
        z = logits.detach().double().requires_grad_(True)
        loss = attack_loss(z, y, s.loss, s.kappa)
        (gz,) = torch.autograd.grad(loss.sum(), z)
        if rescale:
            gz = gz / gz.abs().amax(1, keepdim=True).clamp_min(1e-300)
        if logits.requires_grad:
            (g,) = torch.autograd.grad(logits, x_in, grad_outputs=gz.to(logits.dtype), allow_unused=True)
        else:  # a forward with no differentiable path to the input: a zero gradient, not a crash
            g = None
        g = torch.zeros_like(x_in) if g is None else g
        if s.eot_mode == "normalized" and s.eot_samples > 1:
            g = g / _view(g.flatten(1).norm(dim=1).clamp_min(1e-30), g)
        total = g if total is None else total + g
        if i == 0:
            first_logits, first_loss = logits.detach(), loss.detach()
    return first_loss, first_logits, total if s.eot_samples == 1 else total / s.eot_samples


class _Tracker:
    """Per-sample bookkeeping across steps, restarts and replicas: the first fooling iterate, else the
    highest-loss one."""

    def __init__(self, x: torch.Tensor):
        n = x.shape[0]
        self.best = x.clone()
        self.best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=torch.float64)
        self.fooled = torch.zeros(n, dtype=torch.bool, device=x.device)

    def update(self, owner, x_now, loss, hit=None):
        open_ = ~self.fooled
        cand = torch.full_like(self.best_loss, float("-inf")).scatter_reduce(0, owner, loss, "amax")
        better = (cand > self.best_loss) & open_
        if better.any():
            rows = better[owner] & (loss == cand[owner])  # replicas tying on the max: any one is a keeper
            self.best[owner[rows]] = x_now[rows]
            self.best_loss = torch.where(better, cand, self.best_loss)
        if hit is not None:
            hit = hit & open_[owner]
            if hit.any():
                self.best[owner[hit]] = x_now[hit]
                self.fooled[owner[hit]] = True


def _judge(judge, x_adv, y, rows=None):
    with torch.no_grad():
        if rows is None:
            return judge(x_adv, y)
        out = torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)
        if rows.numel():
            out[rows] = judge(x_adv[rows], y[rows])
        return out


class _Trace:
    """What bench.verdicts reads from a run, at no extra pass: which input gradients were dead at the attack's
    start (first restart, step 0) and the running best loss of the first restart at step 0, at the start of the
    last `window` fraction of the steps and at the end (NaN where a point left the batch early)."""

    def __init__(self, out: dict, x: torch.Tensor, s: PGDSettings):
        n = x.shape[0]
        self.out, self.s = out, s
        self.vanishing = out.get("vanishing", 1e-12)
        self.cut = s.steps - max(1, round(out.get("window_fraction", 0.1) * s.steps))
        nan = torch.full((n,), float("nan"), dtype=torch.float64, device=x.device)
        out.update(steps=s.steps, start=nan.clone(), window=nan.clone(), final=nan.clone(),
                   start_dead=torch.zeros(n, dtype=torch.bool, device=x.device),
                   start_seen=torch.zeros(n, dtype=torch.bool, device=x.device))
        self.best = nan.clone()

    def record(self, t: int, owner, first, loss, g=None, hit=None) -> None:
        rows, o = first.nonzero().squeeze(1), owner[first]
        cur = loss[rows].detach().double()
        self.best[o] = torch.where(torch.isnan(self.best[o]), cur, torch.maximum(self.best[o], cur))
        if t == 0:
            self.out["start"][o] = cur
            if g is not None:
                # a start that already fools the model needs no gradient (a clamped margin loss has none there)
                seen = ~hit[rows] if hit is not None else torch.ones_like(rows, dtype=torch.bool)
                self.out["start_dead"][o] = dead_gradients(g[rows], self.vanishing) & seen
                self.out["start_seen"][o] = seen
        if t == self.cut:
            self.out["window"][o] = self.best[o]
        if t == self.s.steps:
            self.out["final"][o] = self.best[o]


def run_pgd(model, x: torch.Tensor, y: torch.Tensor, s: PGDSettings, gen: torch.Generator,
            judge=None, trace: dict | None = None, point_seeds: list[int] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x_adv, fooled). `judge(x_adv, y) -> fooled` replaces the step forward's verdict for
    stochastic models (e.g. an ensemble); it is then applied at the end of each restart to the highest-loss
    iterate and to the final one. A `trace` dict is filled for bench.verdicts (see _Trace). `point_seeds` (one
    per row of x, AttackContext.point_seeds) draws every restart of every point from its own seed, so each
    point's trajectory is the same whichever points share its batch; without it, starts come from `gen`."""
    n = x.shape[0]
    tr = _Tracker(x)
    tracer = _Trace(trace, x, s) if trace is not None else None
    rounds = (s.restarts + s.batch_restarts - 1) // s.batch_restarts
    for r in range(rounds):
        replicas = min(s.batch_restarts, s.restarts - r * s.batch_restarts)
        alive = (~tr.fooled).nonzero().squeeze(1) if s.early_stop else torch.arange(n, device=x.device)
        if alive.numel() == 0:
            break
        owner = alive.repeat(replicas)  # row -> sample index
        xa, ya = x[owner], y[owner]
        if s.random_start or r > 0 or replicas > 1:
            seeds = None
            if point_seeds is not None:  # restart number (round, replica) of each row, mixed into its point's seed
                restart = [r * s.batch_restarts + j // alive.numel() for j in range(owner.numel())]
                seeds = [point_seeds[o] * 104_729 + k for o, k in zip(owner.tolist(), restart)]
            delta = random_start(xa, s.norm, s.eps, gen, seeds)
            if r == 0 and not s.random_start:
                delta[: alive.numel()] = 0  # the first replica of the first round keeps the zero start
        else:
            delta = torch.zeros_like(xa)
        # rows of the first restart's first replica: the ones the trace follows
        first = torch.zeros(owner.numel(), dtype=torch.bool, device=x.device)
        if r == 0:
            first[: alive.numel()] = True
        for t in range(s.steps + 1):
            last = t == s.steps
            x_in = (xa + delta).detach().requires_grad_(not last)
            if last:  # the final iterate only needs a verdict, not a gradient
                with torch.no_grad(), _autocast(x, s):
                    logits = model(x_in)
                loss = attack_loss(logits.double(), ya, s.loss, s.kappa)
            else:
                loss, logits, g = _grad(model, x_in, ya, s)
            x_now = x_in.detach()
            hit = None
            if judge is None:
                hit = logits.argmax(1) != ya
                if s.amp and x.device.type == "cuda" and hit.any():  # low precision proposes, fp32 decides
                    with torch.no_grad():
                        hit[hit.clone()] = model(x_now[hit]).float().argmax(1) != ya[hit]
            if tracer is not None and r == 0:
                tracer.record(t, owner, first, loss, None if last else g, hit)
            tr.update(owner, x_now, loss, hit)
            if judge is None and s.early_stop:
                keep = ~tr.fooled[owner]
                if not keep.all():
                    owner, xa, ya, delta, x_now = owner[keep], xa[keep], ya[keep], delta[keep], x_now[keep]
                    first = first[keep]
                    if not last:
                        g = g[keep]
                    if owner.numel() == 0:
                        break
            if not last:
                delta = step(delta, g, xa, s).detach()
        if judge is not None:
            tr.fooled |= _judge(judge, tr.best, y, alive)
            # the ensemble may fall on the final iterate rather than on the single-pass highest-loss one
            rows = _judge(judge, x_now, ya) & ~tr.fooled[owner]
            tr.best[owner[rows]] = x_now[rows]
            tr.fooled[owner[rows]] = True
    changed = enforce_budget(tr.best, x, s.norm, s.eps)
    if changed.any():  # a rounding-level shrink may in principle undo a fooling point: re-decide it
        rows = changed.nonzero().squeeze(1)
        if judge is not None:
            tr.fooled[rows] = _judge(judge, tr.best[rows], y[rows])
        else:
            with torch.no_grad():
                tr.fooled[rows] = model(tr.best[rows]).argmax(1) != y[rows]
    return tr.best, tr.fooled
