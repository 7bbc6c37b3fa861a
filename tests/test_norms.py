"""The norm objects of bench.pgd and PGDParams.settings() against the hand-written code they replaced,
copied here verbatim as the reference: draws, steps, measured norms and budget fix-ups must match bitwise, and
every PGD-engine plug-in must give exactly the PGDSettings it gave before."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.attack import perturbation_norm
from bench.params import step_value
from bench.pgd import NORMS, PGDSettings, _ball_draw, enforce_budget, norm_of, project_l1_box, random_start, step


# ---------------------------------------------------------------- the reference: the code the norm objects replaced

def _view(v, like):
    return v.view(-1, *([1] * (like.dim() - 1)))


def old_perturbation_norm(delta, norm):
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    raise ValueError(f"unknown norm {norm!r}")


def old_ball_draw(shape, norm, eps, gen):
    dim = math.prod(shape[1:])
    if norm == "linf":
        return (torch.rand(shape, generator=gen) * 2 - 1) * eps
    if norm == "l2":
        direction = torch.randn(shape, generator=gen)
        direction = direction / _view(direction.flatten(1).norm(dim=1), direction)
    else:
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        direction = sign * torch.empty(shape).exponential_(generator=gen)
        direction = direction / _view(direction.flatten(1).abs().sum(1), direction)
    radius = torch.rand(shape[0], generator=gen) ** (1.0 / dim) * eps
    return direction * _view(radius, direction)


def old_random_start(x, norm, eps, gen, row_seeds=None):
    if row_seeds is None:
        delta = old_ball_draw(x.shape, norm, eps, gen)
    else:
        rows = [old_ball_draw((1, *x.shape[1:]), norm, eps, torch.Generator().manual_seed(s % 2**63))
                for s in row_seeds]
        delta = torch.cat(rows) if rows else torch.zeros(x.shape)
    delta = delta.to(x.device, x.dtype)
    return (x + delta).clamp(0, 1) - x


def old_step(delta, grad, x, s):
    lo, hi = -x, 1 - x
    if s.norm == "linf":
        return torch.minimum(torch.maximum(delta + s.step_size * grad.sign(), lo.clamp(min=-s.eps)),
                             hi.clamp(max=s.eps))
    radius = s.eps * (1 - 1e-6)
    if s.norm == "l2":
        g = grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-30), grad)
        d = delta + s.step_size * g
        n = d.flatten(1).norm(dim=1)
        d = d * _view((radius / n.clamp_min(1e-30)).clamp(max=1.0), d)
        return d.clamp(lo, hi)
    if s.norm == "l1":
        if s.l1_step == "dense":
            g = grad / _view(grad.flatten(1).abs().sum(1).clamp_min(1e-30), grad)
            d = delta + s.step_size * g
            n = d.flatten(1).abs().sum(1)
            return (d * _view((radius / n.clamp_min(1e-30)).clamp(max=1.0), d)).clamp(lo, hi)
        at_edge = ((grad > 0) & (delta >= hi - 1e-7)) | ((grad < 0) & (delta <= lo + 1e-7))
        g = grad.masked_fill(at_edge, 0.0)
        a = g.flatten(1).abs()
        k = max(1, int(round((1 - s.l1_sparsity) * a.shape[1])))
        thresh = a.topk(k, dim=1).values[:, -1:]
        e = (g.sign().flatten(1) * (a >= thresh)).view_as(g)
        e = e / _view(e.flatten(1).abs().sum(1).clamp_min(1e-30), e)
        return project_l1_box(delta + s.step_size * e, radius, lo, hi)
    raise ValueError(f"unknown norm {s.norm!r}")


def old_enforce_budget(x_adv, x, norm, eps):
    boxed = x_adv.clamp(0, 1)
    changed = (boxed != x_adv).flatten(1).any(1)
    x_adv.copy_(boxed)
    if norm == "linf":
        return changed
    for _ in range(8):
        delta = x_adv - x
        over = old_perturbation_norm(delta, norm) > eps
        if not over.any():
            break
        n = old_perturbation_norm(delta[over], norm)
        x_adv[over] = (x[over] + delta[over] * _view(eps / n * (1 - 1e-6), delta[over])).clamp(0, 1)
        changed |= over
    return changed


def old_settings(p) -> PGDSettings:
    step = step_value(p.step_size, p.eps, p.steps)
    return PGDSettings(norm=p.norm, eps=p.eps, steps=p.steps, step_size=step, restarts=p.restarts,
                       batch_restarts=min(p.batch_restarts, p.restarts), loss=p.loss, kappa=p.kappa,
                       random_start=p.random_start, eot_samples=p.eot_samples, eot_mode=p.eot_mode,
                       early_stop=p.early_stop, l1_sparsity=p.l1_sparsity, l1_step=p.l1_step, amp=p.amp)


# ---------------------------------------------------------------- norms

EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 6.0}
CASES = [("linf", "slide"), ("l2", "slide"), ("l1", "slide"), ("l1", "dense")]


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _inputs(norm, dtype, seed=0, shape=(6, 3, 8, 8)):
    """Images (some at the box faces), an in-ball delta with coordinates pinned at the box, a gradient with zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    delta = old_random_start(x, norm, EPS[norm], g)
    pin = torch.rand(shape, generator=g) < 0.1
    delta = torch.where(pin & (torch.rand(shape, generator=g) < 0.5), -x, torch.where(pin, 1 - x, delta))
    grad = torch.randn(shape, generator=g, dtype=dtype)
    grad[torch.rand(shape, generator=g) < 0.05] = 0.0
    grad[-1] = 0.0  # a dead gradient row
    return x, delta, grad


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (1, 784), (0, 3, 4, 4)])
def test_ball_draw_and_random_start_match_the_old_formulas(norm, shape):
    eps = EPS[norm]
    for seed in range(3):
        ref = old_ball_draw(shape, norm, eps, torch.Generator().manual_seed(seed))
        _same(_ball_draw(shape, norm, eps, torch.Generator().manual_seed(seed)), ref)
        _same(NORMS[norm].ball_draw(shape, eps, torch.Generator().manual_seed(seed)), ref)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(9))
    for seeds in (None, [3, 2**70 + 5, 11, 0, 7][: shape[0]]):  # [] for the empty batch
        _same(random_start(x, norm, eps, torch.Generator().manual_seed(1), seeds),
              old_random_start(x, norm, eps, torch.Generator().manual_seed(1), seeds))
    # the same generator state afterwards: the same number of draws, in the same order
    g_new, g_old = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    random_start(x, norm, eps, g_new)
    old_random_start(x, norm, eps, g_old)
    assert torch.equal(g_new.get_state(), g_old.get_state())


@pytest.mark.parametrize("norm,l1_step", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_matches_the_old_formulas(norm, l1_step, dtype):
    for seed, (step_size, sparsity) in enumerate([(EPS[norm] / 4, 0.99), (EPS[norm] * 3, 0.9), (1e-3, 0.5)]):
        x, delta, grad = _inputs(norm, dtype, seed)
        s = PGDSettings(norm=norm, eps=EPS[norm], step_size=step_size, l1_sparsity=sparsity, l1_step=l1_step)
        _same(step(delta, grad, x, s), old_step(delta, grad, x, s))
        _same(NORMS[norm].step(delta, grad, x, s), old_step(delta, grad, x, s))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_measure_and_enforce_budget_match_the_old_formulas(norm, dtype):
    x, delta, _ = _inputs(norm, dtype, seed=5)
    _same(perturbation_norm(delta, norm), old_perturbation_norm(delta, norm))
    _same(NORMS[norm].measure(delta), old_perturbation_norm(delta, norm))
    eps = EPS[norm]
    g = torch.Generator().manual_seed(2)
    d = torch.randn(x.shape, generator=g, dtype=dtype)
    d = d * (eps / old_perturbation_norm(d, norm)).view(-1, 1, 1, 1) * 1.00001
    for xa in ((x + d).clamp(0, 1), x + d, x + delta):  # over budget; also out of the box; within both
        new, old = xa.clone(), xa.clone()
        _same(enforce_budget(new, x, norm, eps), old_enforce_budget(old, x, norm, eps))
        _same(new, old)


def test_unknown_norm_is_a_value_error():
    for call in (lambda: norm_of("l3"), lambda: perturbation_norm(torch.zeros(1, 2), "l3"),
                 lambda: step(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2), PGDSettings(norm="l3"))):
        with pytest.raises(ValueError, match="unknown norm 'l3'"):
            call()


# ---------------------------------------------------------------- PGDParams.settings()

VARIANTS = [
    {},
    {"restarts": 3, "batch_restarts": 5, "step_size": "1/255", "steps": 7, "loss": "cw", "kappa": 20,
     "random_start": False, "eot_samples": 3, "eot_mode": "normalized", "early_stop": False, "amp": True},
    {"norm": "l1", "eps": 12, "step_size": "2.5*eps", "steps": 10, "restarts": 4, "batch_restarts": 2,
     "l1_sparsity": 0.95, "l1_step": "dense", "backward": "identity", "channels_last": True, "batch_size": 16},
    {"norm": "l2", "eps": 0.25, "step_size": 0.05},
]


def _engine_attacks():
    from bench.registry import plugins

    found = {name: cls for name, cls in plugins("attack").items() if callable(getattr(cls.Params, "settings", None))}
    assert {"pgd_linf", "pgd_l2", "pgd_l1", "cw_linf", "pgd_eot", "fgsm", "bim"} <= set(found)
    return found


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_settings_are_the_ones_copied_by_hand_before(variant):
    for name, cls in _engine_attacks().items():
        p = cls.Params(**VARIANTS[variant])
        new, old = p.settings(), old_settings(p)
        assert new == old, name
        # the same values of the same types (an int eps stays what the model holds)
        assert [type(v) for v in dataclasses.astuple(new)] == [type(v) for v in dataclasses.astuple(old)], name


def test_settings_by_hand_for_a_few_attacks():
    from bench.registry import get_plugin

    fgsm = get_plugin("attack", "fgsm").Params().settings()
    assert fgsm == PGDSettings(norm="linf", eps=8 / 255, steps=1, step_size=8 / 255, random_start=False)
    l1 = get_plugin("attack", "pgd_l1").Params(restarts=2, batch_restarts=9, l1_step="dense").settings()
    assert l1 == PGDSettings(norm="l1", eps=30.0, steps=40, step_size=30.0 / 8, restarts=2, batch_restarts=2,
                             l1_step="dense")
    eot = get_plugin("attack", "pgd_eot").Params(step_size="1/255").settings()
    assert eot == PGDSettings(step_size=1 / 255, eot_samples=40, eot_mode="normalized")


def test_norm_objects_are_public_api():
    """Plug-ins reach a threat model's geometry through `bench` (the public API), the same objects the engine uses."""
    import bench

    delta = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("linf", "l2", "l1"):
        assert isinstance(bench.norm_of(name), bench.Norm) and bench.norm_of(name) is NORMS[name]
        _same(bench.norm_of(name).measure(delta), bench.perturbation_norm(delta, name))
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        bench.norm_of("l3")
