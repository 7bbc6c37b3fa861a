"""Boundary and HopSkipJump (foolbox, batched) from cached nearest-neighbour starting points; min-norm rows."""
import json

import eagerpy as ep
import pytest
import torch

import bench
from attacks._starts import nearest_candidates, pool_predictions, starting_points
from attacks.minnorm import PerSampleHopSkipJump
from bench.attack import AttackContext
from bench.runner import harness_services, load_subset


def test_start_is_the_nearest_image_predicted_as_another_class():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([3, 5])
    pool = torch.zeros(5, 1, 2, 2)
    pool[0] += 0.1   # nearest to both, but predicted 3 (image 0's label)
    pool[1] += 0.2   # predicted 5 (image 1's label)
    pool[2] += 0.3   # predicted 7
    pool[3] += 0.05  # predicted 5
    pool[4] += 0.0   # an exact copy of both images: never a start
    pred = torch.tensor([3, 5, 7, 5, 1])
    cand = nearest_candidates(x, y, pool, pred, k=3)
    assert cand[0].tolist() == [3, 1, 2]  # 0.05 (pred 5), 0.2 (pred 5), 0.3 (pred 7); the 3 and the copy skipped
    assert cand[1].tolist() == [0, 2, -1]  # only images predicted as something other than 5 qualify

    class Oracle(torch.nn.Module):  # disagrees with the cached predictions: 3 everywhere, 7 for pool image 2
        def forward(self, z):
            out = torch.zeros(len(z), 10)
            out[:, 3] = 1.0
            out[(z.flatten(1)[:, 0] - 0.3).abs() < 1e-6, 7] = 2.0
            return out

    starts, valid, queries = starting_points(x, y, Oracle(), pool, pred, k=3)
    assert valid.tolist() == [True, True]
    # image 0 (label 3): candidates 3 and 1 now read as 3, so the next nearest, pool image 2, is its start;
    # image 1 (label 5): its nearest candidate reads as 3, which is adversarial for it
    assert torch.equal(starts[0], pool[2]) and torch.equal(starts[1], pool[0])
    assert queries.tolist() == [3, 1]


def test_hopskipjump_gradient_is_normalised_per_image():
    """foolbox 3.3.4 normalises by the norm of the whole batch; our subclass must give unit norm per image."""
    torch.manual_seed(0)
    attack = PerSampleHopSkipJump(steps=1, constraint="l2")
    x_advs = ep.astensor(torch.rand(6, 3, 8, 8))
    is_adv = lambda z: ep.astensor(z.raw.flatten(1)[:, 0] > 0.5)  # noqa: E731
    grad = attack.approximate_gradients(is_adv, x_advs, 20, ep.astensor(torch.full((6,), 0.1)))
    norms = grad.raw.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(6), atol=1e-4), norms


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("attack", ["boundary", "hopskipjump"])
def test_min_norm_attack_row_on_natural(env, natural_smoke, attack):
    (row,) = bench.run(defense="natural", attack=attack, dataset="cifar10", profile="smoke", env=env)
    params = env.cfg.attack(attack, "cifar10", "smoke").params
    assert int(row["n"]) == params.n_test and row["norm"] == "l2"
    assert float(row["success_rate"]) >= 0.9  # a natural model is fooled from every valid start
    mean, median = float(row["mean_norm"]), float(row["median_norm"])
    assert 0 < median and 0 < mean < 5
    assert float(row["queries"]) > 10
    clean, robust = float(row["clean_acc"]), float(row["robust_acc"])
    assert robust <= clean  # accuracy at the row's eps budget

    # the attack must beat its own starting points (the nearest image of another predicted class)
    manifest = json.loads((env.store.manifest_dir / f"{row['cell']}.json").read_text())
    per = manifest["per_sample"]
    assert manifest["attack_info"]["starts"]["without_start"] == 0
    x, y = load_subset("cifar10", "test", env.data_root, params.n_test, 0)
    fooled = torch.tensor(per["fooled"])
    norms = torch.tensor(per["norm"])[fooled]
    ctx = AttackContext(defense=natural_smoke.defense, device=env.device, seed=0, batch_size=200,
                        dataset="cifar10", profile="smoke", **harness_services(env, "cifar10", "smoke", 0))
    model = bench.PassCounter(natural_smoke.model).eval()
    pool_x, pool_pred = pool_predictions(model, ctx, params.start_pool)
    starts, valid, _ = starting_points(x[fooled], y[fooled], model, pool_x, pool_pred)
    start_norms = (starts - x[fooled]).flatten(1).norm(dim=1)
    assert valid.all()
    if attack == "boundary":  # it only ever accepts a closer adversarial point (HSJ's path is not monotone)
        assert (norms <= start_norms * 1.01 + 1e-4).all()
    assert norms.mean() < 0.8 * start_norms.mean(), (norms.mean(), start_norms.mean())
    # the pool predictions were cached once and are reused
    assert len(list((env.cache.root / "starts").glob("*.pt"))) == 1
