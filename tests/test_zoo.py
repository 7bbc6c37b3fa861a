"""ZOO-ADAM: near-optimal on a linear model (where the minimum L2 is known), and it breaks the natural model."""
import pytest
import torch

import bench
from attacks.zoo import ZOO
from bench.attack import AttackContext


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation cost (large on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear_problem(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g))
        model[1].bias.zero_()
    x = 0.4 + 0.2 * torch.rand(n, 1, 4, 4, generator=g)  # far from the box edges: the box never binds
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


def _min_l2(model, x, y):
    """Exact minimum L2 to the nearest decision boundary of a linear classifier."""
    w = model[1].weight
    with torch.no_grad():
        z = model(x)
    out = []
    for i in range(len(x)):
        d = [(z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).norm() for j in range(3) if j != y[i]]
        out.append(min(d))
    return torch.stack(out)


def test_zoo_is_near_optimal_on_a_linear_model(one_thread):
    model, x, y = _linear_problem()
    params = ZOO.Params(iterations=100, binary_steps=4, abort_early=False)
    ctx = AttackContext(defense=None, device=torch.device("cpu"), seed=0, batch_size=len(x))
    out = ZOO(params).run(model, x, y, ctx)
    with torch.no_grad():
        assert (model(out.x_adv).argmax(1) != y).all()
    l2 = (out.x_adv - x).flatten(1).norm(dim=1)
    best = _min_l2(model, x, y)
    assert (l2 >= best * 0.999 - 1e-4).all()  # geometry: nothing closer can be adversarial
    assert (l2 <= best * 1.1).all(), (l2 / best)  # measured: within 0.2 % for 5 of 6, 3.3 % for one
    # 16 coordinates (all of them) -> 33 passes per image per iteration, every iteration of every binary step
    assert out.queries.tolist() == [33 * 100 * 4] * len(x)


def test_zoo_stops_stalled_images_early(one_thread):
    model, x, y = _linear_problem(n=3, seed=1)
    params = ZOO.Params(iterations=200, binary_steps=1, initial_const=1e-6)  # c too small: the loss only grows
    ctx = AttackContext(defense=None, device=torch.device("cpu"), seed=0, batch_size=len(x))
    out = ZOO(params).run(model, x, y, ctx)
    assert not out.fooled.any()
    assert (out.queries < 33 * 200).all()  # aborted at the first tenth-of-the-run check that saw no progress


@pytest.mark.slow
@pytest.mark.ci
def test_zoo_breaks_the_natural_smoke_model(env, natural_smoke):
    (row,) = bench.run(defense="natural", attack="zoo", dataset="cifar10", profile="smoke", env=env)
    params = env.cfg.attack("zoo", "cifar10", "smoke").params
    n_attacked = round(float(row["clean_acc"]) * int(row["n"]))
    assert int(row["n"]) == params.n_test and n_attacked >= 2
    assert float(row["success_rate"]) >= 0.75, row  # paper: 100 % on a natural model
    assert float(row["mean_norm"]) < 1.0  # paper: mean L2 0.13 on a (much better trained) natural model
    per_image = 2 * params.coordinates + 1
    assert per_image <= float(row["queries"]) <= per_image * params.iterations * params.binary_steps
