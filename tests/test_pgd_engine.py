"""Fast checks of the projected-gradient engine on a tiny model (the strength validation against
torchattacks/foolbox on real models lives in the attack tests)."""
import pytest
import torch
import torch.nn as nn

from bench.attack import PassCounter, perturbation_norm
from bench.pgd import PGDSettings, project_l1_box, run_pgd


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1), ("l1", 5.0, 1.0)])
def test_budget_and_box_are_respected(norm, eps, step):
    m = _model()
    x, y = _data()
    s = PGDSettings(norm=norm, eps=eps, steps=10, step_size=step, restarts=3)
    x_adv, _ = run_pgd(m, x, y, s, torch.Generator().manual_seed(0))
    assert (perturbation_norm(x_adv - x, norm) <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_fooled_verdict_matches_model():
    m = _model()
    x, y = _data()
    x_adv, fooled = run_pgd(m, x, y, PGDSettings(eps=0.1, steps=10, step_size=0.02), torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fooled, m(x_adv).argmax(1) != y)


def test_l1_box_projection_is_exact():
    """Compare with a brute-force solution of min ||d - v||^2 s.t. ||d||_1 <= eps, lo <= d <= hi."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 20, generator=g)
    lo, hi = -torch.rand(4, 20, generator=g), torch.rand(4, 20, generator=g)
    eps = 2.0
    d = project_l1_box(v, eps, lo, hi, iters=60)
    assert (d.abs().sum(1) <= eps + 1e-5).all() and (d >= lo - 1e-7).all() and (d <= hi + 1e-7).all()
    # any feasible point (random feasible candidates) is no closer to v
    for _ in range(200):
        c = (torch.rand(4, 20, generator=g) * (hi - lo) + lo)
        c = c * (eps / c.abs().sum(1, keepdim=True)).clamp(max=1)
        assert ((c - v).pow(2).sum(1) >= (d - v).pow(2).sum(1) - 1e-5).all()


def test_early_exit_spends_passes_only_on_robust_points():
    m = _model()
    x, y = _data(128)
    counter = PassCounter(m)
    s = PGDSettings(eps=1.0, steps=20, step_size=0.1, restarts=5)  # huge eps: everything falls at once
    _, fooled = run_pgd(counter, x, y, s, torch.Generator().manual_seed(0))
    assert fooled.all()
    assert counter.backward_images <= 3 * 128  # without early exit: 20 * 5 * 128


def test_more_budget_never_helps_the_defender():
    m = _model()
    x, y = _data(128)
    accs = []
    for eps in (0.0, 0.01, 0.03, 0.1):
        xa, fooled = run_pgd(m, x, y, PGDSettings(eps=eps, steps=10, step_size=eps / 4 or 1e-3, restarts=2),
                             torch.Generator().manual_seed(0))
        accs.append((~fooled & (m(x).argmax(1) == y)).float().mean().item())
    assert accs == sorted(accs, reverse=True)


def test_batched_restarts_find_at_least_as_much_as_sequential():
    m = _model()
    x, y = _data(128)
    s1 = PGDSettings(eps=0.03, steps=5, step_size=0.01, restarts=4, batch_restarts=1)
    s4 = PGDSettings(eps=0.03, steps=5, step_size=0.01, restarts=4, batch_restarts=4)
    _, f1 = run_pgd(m, x, y, s1, torch.Generator().manual_seed(0))
    _, f4 = run_pgd(m, x, y, s4, torch.Generator().manual_seed(0))
    assert abs(f1.float().mean() - f4.float().mean()) <= 0.05


def test_point_seeds_make_each_points_attack_independent_of_its_batch():
    """With point_seeds, a point's restarts start from its own draws: attacking a subset of the batch in another
    order gives each point bitwise the same adversarial example (what bench.suite relies on); with one
    generator per batch, rows take each other's starts and the examples differ."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)).eval()
    x, y = torch.rand(24, 3, 4, 4), torch.randint(0, 3, (24,))
    s = PGDSettings(norm="linf", eps=0.1, steps=2, step_size=0.01, restarts=3, early_stop=False)
    seeds = [1000 + 7 * i for i in range(24)]
    sub = torch.tensor([17, 3, 9, 20, 11])
    full, _ = run_pgd(model, x, y, s, torch.Generator().manual_seed(0), point_seeds=seeds)
    part, _ = run_pgd(model, x[sub], y[sub], s, torch.Generator().manual_seed(0),
                      point_seeds=[seeds[i] for i in sub.tolist()])
    assert torch.equal(part, full[sub])
    full, _ = run_pgd(model, x, y, s, torch.Generator().manual_seed(0))
    part, _ = run_pgd(model, x[sub], y[sub], s, torch.Generator().manual_seed(0))
    assert not torch.equal(part, full[sub])
