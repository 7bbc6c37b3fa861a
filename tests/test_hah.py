"""HaH blocks: scale-invariant divisive normalisation, the fractional threshold, the HaH objective, gradient
isolation (the one-pass implementation equals the naive per-block definition), diagnostics, the Gaussian-noise
evaluation and smoke training end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

from bench import AttackContext, ConfigError
from bench.config import load_config
from bench.data import dataset_info
from defenses._hah_layers import (ConvUnit, DivisiveNorm2d, FractionalThreshold, blockwise_stats, hah_objective,
                                  max3x3, squared_hoyer)
from defenses.hah import HaH, PlainVGG16

CIFAR = dataset_info("cifar10")


def make_hah(**params):
    base = {"width": 0.125, "epochs": 1}
    base.update(params)
    d = HaH(HaH.Params(**base), CIFAR)
    torch.manual_seed(0)
    return d, d.build_model()


def test_divisive_normalization_is_scale_invariant():
    torch.manual_seed(0)
    dn = DivisiveNorm2d(0.1)
    x = F.relu(torch.randn(4, 16, 12, 12))
    for c in (1e-2, 0.5, 7.3, 1e3):
        assert torch.allclose(dn(x * c), dn(x), rtol=1e-4, atol=1e-5), c
    # and a whole HaH block (WN conv -> ReLU -> DN -> threshold) is invariant to scaling its input
    unit = ConvUnit(3, 8, "divisive", 0.1, 0.2, hah=True)
    img = torch.rand(2, 3, 16, 16)
    assert torch.allclose(unit(img * 5.0), unit(img), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unit(img + 0.5), unit(img), atol=1e-3)  # not trivially constant


def test_max3x3_equals_max_pool():
    a = F.relu(torch.randn(3, 5, 9, 7))
    assert torch.equal(max3x3(a), F.max_pool2d(a, 3, 1, 1))


@pytest.mark.parametrize("side,keep", [(32, 0.2), (8, 0.2), (16, 0.5), (4, 0.1)])
def test_threshold_keeps_the_stated_fraction(side, keep):
    torch.manual_seed(1)
    x = torch.rand(3, 6, side, side)  # continuous values: no ties
    out = FractionalThreshold(keep)(x)
    n = side * side
    expected = n - math.floor((1 - keep) * n)
    assert abs(expected - keep * n) < 1
    kept = (out != 0).flatten(2).sum(-1)
    assert (kept == expected).all()
    # the kept positions are the largest ones and keep their values
    top = x.flatten(2).topk(expected, dim=-1).values
    assert torch.equal(out.flatten(2).sort(-1, descending=True).values[..., :expected], top)


def test_hah_objective_matches_the_sorted_definition():
    torch.manual_seed(2)
    a = F.relu(torch.randn(3, 20, 5, 5))
    k = math.ceil(0.1 * 20)
    s = a.sort(dim=1, descending=True).values
    naive = (s[:, :k].mean(1) - 0.1 * s[:, k:].mean(1)).mean()
    assert torch.allclose(hah_objective(a, 0.1, 0.1), naive, atol=1e-6)
    assert torch.allclose(hah_objective(a[:, :1], 0.1, 0.1), a[:, 0].mean())  # C = K: no anti-Hebbian part


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_hah_gradient_equals_the_naive_per_block_definition():
    """One forward + one backward (weight-only taps) == CE through the whole net plus, for each HaH conv, the
    gradient of -alpha_k * L_k with that conv's input held fixed (the naive definition: detach and recompute)."""
    d, m = make_hah(hah_lambda=0.3)
    m.double().train()
    x, y = torch.rand(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    state = {k: v.clone() for k, v in m.state_dict().items()}

    loss, _ = d.batch_loss(m, x, y)
    loss.backward()
    fast = _grads(m)

    m.load_state_dict(state)  # same BN statistics for the naive pass
    m.zero_grad()
    io = []
    logits = m(x, block_io=io)
    F.cross_entropy(logits, y).backward()
    units = m.units()
    for k, alpha in enumerate(d.params.hah_alpha):
        x_in = io[k][0].detach()
        a = F.relu(units[k].conv(x_in))
        (-alpha * hah_objective(a, d.params.hah_k, d.params.hah_lambda)).backward()
    naive = _grads(m)
    for name in fast:
        assert torch.allclose(fast[name], naive[name], rtol=1e-9, atol=1e-12), name
    hah_conv = "features.0.conv.weight"
    assert not torch.allclose(fast[hah_conv], torch.zeros_like(fast[hah_conv]))


def test_hah_gradient_does_not_reach_earlier_layers():
    d, m = make_hah()
    m.train()
    acts = []
    m(torch.rand(4, 3, 32, 32), hah_out=acts)
    assert len(acts) == 6
    (-hah_objective(acts[3], 0.1, 0.1)).backward()  # block 4 alone
    convs = [u.conv.weight for u in m.units()]
    for i, w in enumerate(convs):
        has = w.grad is not None and w.grad.abs().sum() > 0
        assert has == (i == 3), i
    assert m.normalize.mean.grad is None


def test_eval_forward_uses_plain_autograd_and_matches_training_values():
    d, m = make_hah()
    m.eval()
    x = torch.rand(3, 3, 32, 32)
    plain = m(x)
    with torch.no_grad():
        tapped = m(x, hah_out=[])
    assert torch.allclose(plain, tapped, atol=1e-6)
    xx = x.clone().requires_grad_(True)
    m(xx).sum().backward()
    assert xx.grad.abs().sum() > 0  # the threshold and divisive norm pass gradients for attacks


def test_ablation_and_baseline_architectures():
    cfg = load_config()
    p = {n: cfg.defense(n, "cifar10", "paper").params for n in
         ("hah", "hah_no_loss", "hah_batchnorm", "hah_no_threshold", "vgg16")}
    assert p["hah"].hah_alpha == [4.5e-3, 2.5e-3, 1.3e-3, 1e-3, 8e-4, 5e-4]
    assert (p["hah"].hah_lambda, p["hah"].hah_k, p["hah"].divisive_sigma, p["hah"].threshold_keep) == (0.1, 0.1, 0.1, 0.2)
    assert (p["hah"].epochs, p["hah"].milestones, p["hah"].batch_size, p["hah"].optimizer) == (100, [60, 80], 128, "adam")
    hah = p["hah"].model_dump()
    assert all(hah[k] == v for k, v in p["vgg16"].model_dump().items())  # the same recipe and width
    for name in ("hah_no_loss", "hah_batchnorm", "hah_no_threshold"):  # bare entries get the paper recipe
        q = p[name]
        assert (q.optimizer, q.lr, q.weight_decay, q.epochs, q.milestones, q.batch_size) == ("adam", 1e-3, 0, 100, [60, 80], 128)
    assert not p["hah_no_loss"].hah_loss and p["hah_batchnorm"].normalization == "batchnorm"
    assert p["hah_no_threshold"].threshold_keep == 1.0
    units = HaH(p["hah_batchnorm"].model_copy(update={"width": 0.125}), CIFAR).build_model().units()
    assert isinstance(units[0].norm, torch.nn.BatchNorm2d) and isinstance(units[0].threshold, FractionalThreshold)
    units = HaH(p["hah_no_threshold"].model_copy(update={"width": 0.125}), CIFAR).build_model().units()
    assert isinstance(units[0].norm, DivisiveNorm2d) and isinstance(units[0].threshold, torch.nn.Identity)
    plain = PlainVGG16(p["vgg16"].model_copy(update={"width": 0.125}), CIFAR).build_model().units()
    assert len(plain) == 13 and all(isinstance(u.norm, torch.nn.BatchNorm2d) and not u.hah for u in plain)
    full = HaH(p["hah"], CIFAR).build_model().units()
    assert [u.conv.out_channels for u in full] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [u.hah for u in full] == [True] * 6 + [False] * 7


def test_bad_hah_settings_are_clear_errors(config_copy):
    text = config_copy.read_text().replace("hah_alpha = [4.5e-3, 2.5e-3, 1.3e-3, 1e-3, 8e-4, 5e-4]",
                                           "hah_alpha = [4.5e-3, 2.5e-3]")
    config_copy.write_text(text)
    with pytest.raises(ConfigError, match="hah_alpha"):
        load_config(config_copy)
    with pytest.raises(ConfigError, match="32x32"):
        HaH(HaH.Params(width=0.125), dataset_info("mnist")).build_model()


def test_squared_hoyer_bounds():
    one_hot = torch.zeros(1, 8, 2, 2)
    one_hot[:, 3] = 2.0
    assert torch.allclose(squared_hoyer(one_hot), torch.zeros(4))
    assert torch.allclose(squared_hoyer(torch.ones(1, 8, 2, 2) * 0.3), torch.ones(4))
    assert squared_hoyer(torch.zeros(1, 8, 2, 2)).numel() == 0  # all-zero locations are left out


def test_blockwise_stats_shapes_and_noise_dependence():
    d, m = make_hah()
    x = torch.rand(8, 3, 32, 32)
    low = blockwise_stats(m, x, 0.01, torch.Generator().manual_seed(0), "cpu", batch_size=4)
    high = blockwise_stats(m, x, 0.2, torch.Generator().manual_seed(0), "cpu", batch_size=4)
    assert len(low["hoyer"]) == len(low["snr_db"]) == 13
    assert all(0 <= h <= 1 for h in low["hoyer"])
    assert low["snr_db"][0] > high["snr_db"][0] + 10  # 20x the noise: ~26 dB less SNR at the input


def test_gaussian_noise_is_seeded_clipped_and_judged():
    from attacks.noise import GaussianNoise

    d, m = make_hah()
    m.eval()
    x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 10, (5,))
    ctx = AttackContext(defense=d, device=torch.device("cpu"), seed=3, batch_size=5)
    a1 = GaussianNoise(GaussianNoise.Params())
    torch.manual_seed(11)  # what the harness does before every batch
    o1 = a1.run(m, x, y, ctx)
    torch.manual_seed(11)
    assert torch.equal(a1.run(m, x, y, ctx).x_adv, o1.x_adv)  # same seed, same noise
    assert not torch.equal(a1.run(m, x, y, ctx).x_adv, o1.x_adv)  # a fresh draw otherwise
    assert o1.x_adv.min() >= 0 and o1.x_adv.max() <= 1
    inside = (o1.x_adv > 0) & (o1.x_adv < 1)
    assert 0.08 < (o1.x_adv - x)[inside].std() < 0.12
    assert torch.equal(o1.fooled, m(o1.x_adv).argmax(1) != y)
    assert a1.kind == "bounded" and a1.norm == "" and a1.eps is None  # the harness reports plain accuracy


@pytest.mark.slow
@pytest.mark.ci
def test_smoke_training_noise_cells_and_blockwise_plot(env):
    import bench
    from bench.commands.diagnose import run_diagnostics

    rows = bench.run(defense=["hah", "vgg16"], attack="gaussian_noise", dataset="cifar10", profile="smoke",
                     n_test=100, env=env)
    for row in rows:
        assert row["norm"] in ("", None) and row["eps"] in ("", None) and int(row["n"]) == 100
        assert float(row["robust_acc"]) <= float(row["clean_acc"])
        assert int(row["forward_passes"]) > 0
    t = bench.train("hah", "cifar10", "smoke", 0, env=env)
    assert len(t.meta["history"][-1]["hah_terms"]) == 6
    assert math.isfinite(t.meta["history"][-1]["loss"])

    summary = run_diagnostics(env, ["hah", "vgg16"], "cifar10", "smoke", 0, n=40)
    with open(summary["blockwise_plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("hah", "vgg16"):
        stats = summary["defenses"][name]["blockwise"]
        assert len(stats["hoyer"]) == len(stats["snr_db"]) == 13
