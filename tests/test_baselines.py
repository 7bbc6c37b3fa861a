"""The adversarially trained baselines: pgd_at, trades, rfgsm (inner maximisation, BatchNorm modes, the paper
recipes in bench.toml, the per-epoch robustness log and the catastrophic-overfitting flag)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bench
from bench.config import load_config
from bench.data import dataset_info
from bench.errors import ConfigError
from bench.pgd import PGDSettings
from bench.registry import get_plugin
from defenses._adversarial import collapse_flags, maximize

CIFAR = dataset_info("cifar10")


class ModeRecorder(nn.Module):
    """A tiny classifier that records whether each forward ran in train mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def _defense(name: str, **params):
    cls = get_plugin("defense", name)
    return cls(cls.Params(**params), CIFAR, "resnet32")


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------- inner maximisation and BatchNorm modes

def test_trades_inner_loop_runs_in_eval_mode_and_restores_train_mode():
    model, (x, y) = ModeRecorder().train(), _batch()
    loss, logits = _defense("trades", steps=3).batch_loss(model, x, y)
    # clean target + 3 inner steps in eval mode, then the clean and adversarial training forwards in train mode
    assert model.modes == [False] * 4 + [True, True]
    assert model.training
    loss.backward()
    assert model.net[1].weight.grad is not None and logits.shape == (16, 10)


def test_pgd_at_inner_loop_keeps_train_mode():
    model, (x, y) = ModeRecorder().train(), _batch()
    _defense("pgd_at", steps=4).batch_loss(model, x, y)
    assert model.modes == [True] * 5 and model.training


def test_maximize_restores_the_mode_when_the_loss_fails():
    model, (x, _) = ModeRecorder().train(), _batch()

    def broken(logits):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        maximize(model, x, torch.zeros_like(x), broken, PGDSettings(steps=2), train_mode=False)
    assert model.training


def test_one_step_from_zero_is_exactly_fgsm_and_stays_in_budget():
    model, (x, y) = ModeRecorder().train(), _batch()
    eps = 8 / 255
    s = PGDSettings(norm="linf", eps=eps, steps=1, step_size=eps)
    x_adv = maximize(model, x, torch.zeros_like(x), lambda z: F.cross_entropy(z, y, reduction="sum"), s, True)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    assert torch.allclose(x_adv, (x + eps * g.sign()).clamp(0, 1))


@pytest.mark.parametrize("name", ["pgd_at", "rfgsm"])
def test_training_examples_raise_the_loss_within_the_ball(name):
    model, (x, y) = ModeRecorder().train(), _batch(64)
    d = _defense(name)
    eps = d.params.eps
    torch.manual_seed(0)
    seen = {}
    original = model.forward

    def capture(inp):
        seen["x"] = inp.detach()
        return original(inp)

    model.forward = capture
    loss, _ = d.batch_loss(model, x, y)
    x_adv = seen["x"]  # the last forward is the training forward on the adversarial batch
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2  # it moved
    assert loss.item() > F.cross_entropy(original(x), y).item() + 1e-3


def test_pgd_at_random_start_is_an_explicit_option():
    model, (x, y) = ModeRecorder().train(), _batch()
    torch.manual_seed(0)
    a = _defense("pgd_at", steps=1, step_size="1/255", random_start=False).batch_loss(model, x, y)[0]
    torch.manual_seed(1)
    b = _defense("pgd_at", steps=1, step_size="1/255", random_start=False).batch_loss(model, x, y)[0]
    torch.manual_seed(1)
    c = _defense("pgd_at", steps=1, step_size="1/255", random_start=True).batch_loss(model, x, y)[0]
    assert a.item() == b.item()  # zero start: deterministic
    assert c.item() != a.item()


def test_trades_loss_is_ce_plus_beta_kl():
    model, (x, y) = ModeRecorder().train(), _batch()
    torch.manual_seed(0)
    ce_only = _defense("trades", beta=0.0).batch_loss(model, x, y)[0]
    torch.manual_seed(0)
    with_kl = _defense("trades", beta=6.0).batch_loss(model, x, y)[0]
    assert math.isclose(ce_only.item(), F.cross_entropy(model(x), y).item(), rel_tol=1e-5)
    assert with_kl.item() > ce_only.item()


# ---------------------------------------------------------------- the recipes in bench.toml

def test_paper_recipes_match_the_papers():
    cfg = load_config()
    pgd = cfg.defense("pgd_at", "cifar10", "paper").params
    assert (pgd.epochs, pgd.batch_size, pgd.lr, pgd.schedule) == (100, 64, 0.05, "cyclic")
    assert (pgd.eps, pgd.steps, pgd.step_size, pgd.random_start) == (8 / 255, 10, 1 / 255, True)
    trades = cfg.defense("trades", "cifar10", "paper").params
    assert (trades.epochs, trades.lr, trades.schedule, trades.milestones, trades.gamma) == (100, 0.01, "multistep", [50], 0.1)
    assert (trades.beta, trades.steps, trades.step_size, trades.start_noise) == (6.0, 10, 1 / 255, 0.001)
    rf = cfg.defense("rfgsm", "cifar10", "paper").params
    assert (rf.epochs, rf.lr, rf.schedule, rf.eps, rf.steps, rf.step_size, rf.random_start) == \
        (100, 0.05, "cyclic", 8 / 255, 1, 10 / 255, True)
    mnist = cfg.defense("pgd_at", "mnist", "paper").params
    assert (mnist.eps, mnist.steps, mnist.optimizer, mnist.lr, mnist.augment) == (0.3, 40, "adam", 1e-3, "none")
    assert math.isclose(float(mnist.step_size[4:]) * mnist.eps, 0.01)
    assert cfg.defense("pgd_at", "fashion_mnist", "paper").params.eps == 0.1


def test_rfgsm_refuses_more_than_one_step(config_copy):
    config_copy.write_text(config_copy.read_text() + "\n[defenses.rf_bad]\nplugin = \"rfgsm\"\nsteps = 3\n")
    with pytest.raises(ConfigError, match="rf_bad.steps"):
        load_config(config_copy)


# ---------------------------------------------------------------- the catastrophic-overfitting rule

def _hist(pgd, fgsm):
    return [{"epoch": i + 1, "pgd_acc": p, "fgsm_acc": f} for i, (p, f) in enumerate(zip(pgd, fgsm))]


def test_collapse_rule_flags_a_pgd_drop_while_fgsm_holds():
    flags = collapse_flags(_hist([0.20, 0.30, 0.35, 0.02], [0.30, 0.40, 0.45, 0.70]), 0.2, 0.4)
    assert flags["collapsed"] and "epoch 4" in flags["reason"]


def test_collapse_rule_leaves_healthy_and_diverging_runs_alone():
    healthy = _hist([0.20, 0.30, 0.36, 0.41], [0.28, 0.38, 0.45, 0.50])
    assert collapse_flags(healthy, 0.2, 0.4) == {"collapsed": False}
    diverged = _hist([0.30, 0.05], [0.40, 0.08])  # both fall: divergence, not catastrophic overfitting
    assert collapse_flags(diverged, 0.2, 0.4) == {"collapsed": False}
    small_drop = _hist([0.40, 0.25], [0.50, 0.55])  # 15 points < the 20-point threshold
    assert collapse_flags(small_drop, 0.2, 0.4) == {"collapsed": False}


def test_collapse_rule_flags_final_gradient_masking():
    masked = _hist([0.02, 0.01], [0.55, 0.90])  # never robust, single-step attack masked
    flags = collapse_flags(masked, 0.2, 0.4)
    assert flags["collapsed"] and "masking" in flags["reason"]


def test_collapse_rule_needs_monitor_data():
    assert collapse_flags([{"epoch": 1, "loss": 1.0}], 0.2, 0.4) == {}
    assert collapse_flags(_hist([float("nan")], [0.5]), 0.2, 0.4) == {}


# ---------------------------------------------------------------- end to end through bench.train (slow)

def _env_with(config_copy, data_root, tmp_path, entries: str):
    from bench.runner import Env

    config_copy.write_text(config_copy.read_text() + entries)
    return Env.create(config=config_copy, data_root=data_root, device="cpu", results_dir=tmp_path / "results")


INNER = {"pgd_at": 'steps = 2\nstep_size = "eps/2"', "trades": 'steps = 2\nstep_size = "eps/2"', "rfgsm": ""}


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("plugin", sorted(INNER))
def test_each_defense_trains_to_a_checkpoint_with_a_robustness_log(plugin, config_copy, data_root, tmp_path):
    from bench.runner import train

    entry = (f'\n[defenses.tiny]\nplugin = "{plugin}"\nepochs = 2\nn_train = 256\nbatch_size = 64\nmonitor_n = 40\n'
             f'monitor_attack_n = 40\nmonitor_steps = 3\nchannels_last = true\n{INNER[plugin]}\n')
    env = _env_with(config_copy, data_root, tmp_path, entry)
    trained = train("tiny", "cifar10", "smoke", 0, env=env)
    assert env.cache.has("checkpoints", trained.key)
    payload, meta = env.cache.load("checkpoints", trained.key)
    assert meta["plugin"] == plugin and meta["n_train"] == 256
    assert [r["epoch"] for r in meta["history"]] == [1, 2]
    for row in meta["history"]:
        for key in ("train_acc", "test_acc", "pgd_acc", "fgsm_acc"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        assert math.isfinite(row["loss"])
        # attacked and clean-scored images are the same 40: an attack can only remove correct points
        assert row["pgd_acc"] <= row["test_acc"] and row["fgsm_acc"] <= row["test_acc"], row
    assert meta["flags"]["collapsed"] in (True, False)
    model = trained.defense.build_model()
    model.load_state_dict(payload["model"])  # channels-last weights load into a plain model
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.ci
def test_mnist_pgd_at_trains_on_a_tiny_subset(env):
    from bench.runner import train

    trained = train("pgd_at", "mnist", "smoke", 0, env=env)
    p = trained.defense.params
    assert (p.eps, trained.meta["n_train"], trained.defense.arch) == (0.3, 2000, "madry_cnn")
    (row,) = trained.meta["history"]
    assert math.isfinite(row["loss"]) and 0.0 <= row["train_acc"] <= 1.0
    # the monitor attacks the same 100 images it scores clean (32 updates at eps 0.3 need not learn yet)
    assert 0.0 <= row["pgd_acc"] <= row["test_acc"] and row["fgsm_acc"] <= row["test_acc"]
    assert trained.meta["flags"]["collapsed"] in (True, False)


@pytest.mark.slow
@pytest.mark.ci
def test_rfgsm_with_a_huge_step_is_flagged_collapsed(config_copy, data_root, tmp_path):
    """A deliberately broken fast-AT run (alpha = 2 eps on MNIST at eps 0.3, where single-step training is known to
    mask gradients) must come out flagged, not as a robust model."""
    from bench.runner import train

    entry = ('\n[defenses.rf_broken]\nplugin = "rfgsm"\noptimizer = "adam"\nlr = 1e-3\nweight_decay = 0.0\n'
             'schedule = "constant"\naugment = "none"\neps = 0.3\nstep_size = "2*eps"\nn_train = 3000\nepochs = 3\n'
             'batch_size = 64\nmonitor_n = 200\nmonitor_attack_n = 200\n')
    env = _env_with(config_copy, data_root, tmp_path, entry)
    trained = train("rf_broken", "mnist", "smoke", 0, env=env)
    last = trained.meta["history"][-1]
    assert last["fgsm_acc"] > last["pgd_acc"] + 0.4, trained.meta["history"]  # the collapse really happened
    assert trained.meta["flags"]["collapsed"] is True
    assert "masking" in trained.meta["flags"]["reason"] or "overfitting" in trained.meta["flags"]["reason"]
    # the flag travels to the result row, beside the honest multi-step number
    (row,) = bench.run(defense="rf_broken", attack="pgd_linf", dataset="mnist", profile="smoke", n_test=50, env=env)
    assert json.loads(row["flags"])["collapsed"] is True
    assert float(row["robust_acc"]) < 0.2


def test_gpu_speed_options_enter_the_checkpoint_key_only_when_on():
    params = get_plugin("defense", "pgd_at").Params
    off = params().model_dump(mode="json")
    assert "amp" not in off and "channels_last" not in off  # earlier checkpoint keys stay valid
    on = params(amp=True, channels_last=True).model_dump(mode="json")
    assert on["amp"] is True and on["channels_last"] is True


def test_eps_warmup_ramps_the_training_budget_and_leaves_old_keys_alone():
    params = get_plugin("defense", "pgd_at").Params
    assert "eps_warmup_epochs" not in params().model_dump(mode="json")  # earlier checkpoint keys stay valid
    p = params(eps=0.3, step_size="eps/4", eps_warmup_epochs=2)
    assert p.model_dump(mode="json")["eps_warmup_epochs"] == 2
    half, full, late = p.inner_settings(1.0), p.inner_settings(2.0), p.inner_settings(5.5)
    assert math.isclose(half.eps, 0.15) and math.isclose(half.step_size, 0.15 / 4)  # relative step follows eps
    assert math.isclose(full.eps, 0.3) and math.isclose(late.eps, 0.3) and math.isclose(p.inner_settings().eps, 0.3)
    assert p.inner_settings(0.0).eps < 1e-6
    # the training batch is attacked within the ramped budget, which the training loop sets through `progress`
    model, (x, y) = ModeRecorder().train(), _batch()
    d = _defense("pgd_at", eps=0.3, steps=3, step_size="eps/2", eps_warmup_epochs=2)
    seen = {}
    original = model.forward
    model.forward = lambda inp: (seen.__setitem__("x", inp), original(inp))[1]
    d.progress = 0.5
    d.batch_loss(model, x, y)
    assert (seen["x"] - x).abs().max() <= 0.075 + 1e-6
