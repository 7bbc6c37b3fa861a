"""Polarizing front end: ternary outputs, L1 normalisation, surrogates that never change the forward, the
three-stage schedule, config validation, and a smoke training end to end."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import BenchError, ConfigError
from bench.config import load_config
from bench.data import dataset_info
from defenses._polarizing_layers import bump_b1, bump_b2, danger_fraction, ternary
from defenses.polarizing import Polarizing


def make(dataset="fashion_mnist", **params):
    base = {"stage_epochs": [2, 2, 2], "epochs": 6, "jump": 0.3, "danger_eps": 0.1}
    base.update(params)
    d = Polarizing(Polarizing.Params(**base), dataset_info(dataset))
    torch.manual_seed(0)
    return d, d.build_model()


def test_ternary_outputs_and_thresholds():
    y = torch.tensor([-0.9, -0.31, -0.3, -0.29, 0.0, 0.29, 0.3, 0.31, 0.9])
    assert ternary(y, 0.3).tolist() == [-1, -1, -0.5, 0, 0, 0, 0.5, 1, 1]  # exactly on a threshold: sign(0) = 0
    d, m = make()
    z = m.eval().front(torch.rand(4, 1, 28, 28))
    assert z.shape == (4, 25, 28, 28)
    assert set(z.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_outputs_are_divided_by_each_filters_l1_norm():
    d, m = make()
    x = torch.rand(3, 1, 28, 28)
    w = m.front.conv.weight
    expected = F.conv2d(x, w, padding=2) / w.abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    assert torch.allclose(m.front.normalized(x), expected, atol=1e-6)
    with torch.no_grad():  # rescaling a filter leaves its normalised output unchanged
        w.mul_(torch.linspace(0.1, 20, 25).view(-1, 1, 1, 1))
    assert torch.allclose(m.front.normalized(x), expected, atol=1e-5)
    # Hölder: a perturbation of Linf size eps moves every normalised output by at most eps
    delta = (torch.rand_like(x) * 2 - 1) * 0.1
    shift = (m.front.normalized(x + delta) - m.front.normalized(x)).abs().max()
    assert shift <= 0.1 + 1e-6


def test_forward_is_bit_identical_across_surrogates_and_backwards_differ():
    d, m = make()
    m.eval()
    x = torch.rand(6, 1, 28, 28)
    grads, logits = {}, {}
    for spec in ("autograd", "identity", "smooth:4", "smooth:16"):
        with d.surrogate(m, spec) as mm:
            xx = x.clone().requires_grad_(True)
            out = mm(xx)
            out.sum().backward()
        logits[spec], grads[spec] = out.detach(), xx.grad
    for spec in logits:
        assert torch.equal(logits[spec], logits["autograd"]), spec
    assert torch.equal(grads["autograd"], grads["identity"])  # identity is the default backward
    assert not torch.allclose(grads["identity"], grads["smooth:4"])
    assert m.front.steepness == 0.0  # the context restored the default


def test_backward_modes_match_their_definitions():
    d, m = make()
    y = (torch.rand(50) * 2 - 1).requires_grad_(True)
    m.front.steepness = 0.0
    (g_id,) = torch.autograd.grad(m.front.quantize(y).sum(), y)
    assert torch.equal(g_id, torch.ones(50))
    m.front.steepness = 4.0
    (g_s,) = torch.autograd.grad(m.front.quantize(y).sum(), y)
    smooth = 0.5 * (torch.tanh(4 * (y - 0.3)) + torch.tanh(4 * (y + 0.3)))
    (g_ref,) = torch.autograd.grad(smooth.sum(), y)
    assert torch.allclose(g_s, g_ref, atol=1e-6)


def test_unknown_surrogate_is_a_clear_error():
    d, m = make()
    for bad in ("top_u:30", "smooth:-1", "smooth:x"):
        with pytest.raises(BenchError, match="smooth:S"):
            with d.surrogate(m, bad):
                pass
    assert d.non_differentiable and "smooth:S" in d.surrogates


def test_three_stage_schedule_ramps_bumps_and_freezes_filters():
    d, m = make()
    seen = []
    for epoch in range(6):
        d.start_epoch(m, epoch)
        seen.append((d.stage, round(d.bump, 3), m.train_quantize, m.front.conv.weight.requires_grad))
    assert seen == [(1, 0.0, False, True), (1, 0.5, False, True), (2, 0.0, False, True), (2, 0.5, False, True),
                    (3, 0.0, True, False), (3, 0.0, True, False)]
    # stage 3: one optimiser step changes the classifier but not the frozen filters
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    m.train()
    d.start_epoch(m, 4)
    w0, c0 = m.front.conv.weight.detach().clone(), m.classifier.fc2.weight.detach().clone()
    loss, logits = d.batch_loss(m, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.equal(m.front.conv.weight, w0) and not torch.equal(m.classifier.fc2.weight, c0)


def test_bump_losses_enter_the_objective_in_their_stage():
    d, m = make()
    m.train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    d.start_epoch(m, 1)  # stage 1, coefficient 0.5, unquantised
    loss, logits = d.batch_loss(m, x, y)
    yf = m.front.normalized(x)
    assert torch.allclose(loss, F.cross_entropy(m.classifier(yf), y) + 0.5 * bump_b1(yf, 0.35), atol=1e-6)
    d.start_epoch(m, 3)  # stage 2
    loss, _ = d.batch_loss(m, x, y)
    assert torch.allclose(loss, F.cross_entropy(m.classifier(yf), y) + 0.5 * bump_b2(yf, 0.15, 0.3), atol=1e-6)


def test_danger_fraction():
    y = torch.tensor([0.0, 0.25, 0.35, 0.45, -0.3, -0.75, 1.0, -0.1])
    assert danger_fraction(y, 0.3, 0.1) == pytest.approx(3 / 8)  # 0.25, 0.35, -0.3


def test_config_rejects_inconsistent_stages(config_copy):
    text = config_copy.read_text().replace("stage_epochs = [2, 2, 1]\nepochs = 5", "stage_epochs = [2, 2, 1]\nepochs = 6")
    config_copy.write_text(text)
    with pytest.raises(ConfigError, match="stage_epochs"):
        load_config(config_copy)


def test_paper_settings_resolve_per_dataset():
    cfg = load_config()
    fm = cfg.defense("polarizing", "fashion_mnist", "paper").params
    mn = cfg.defense("polarizing", "mnist", "paper").params
    assert (fm.jump, fm.danger_eps, mn.jump, mn.danger_eps) == (0.3, 0.1, 0.5, 0.3)
    assert (fm.stage_epochs, fm.epochs, fm.milestones, fm.batch_size, fm.lr) == ([20, 20, 20], 60, [50], 64, 1e-3)
    bare = Polarizing.Params()  # a bare `plugin = "polarizing"` entry trains with the paper's recipe
    assert (bare.optimizer, bare.lr, bare.weight_decay, bare.schedule, bare.augment) == ("adam", 1e-3, 0, "multistep", "none")
    assert (bare.stage_epochs, bare.epochs, bare.milestones, bare.batch_size) == ([20, 20, 20], 60, [50], 64)
    quick = cfg.defense("polarizing", "fashion_mnist", "quick").params
    assert quick.epochs == sum(quick.stage_epochs) and quick.jump == 0.3


@pytest.mark.slow
@pytest.mark.ci
def test_smoke_training_end_to_end_with_diagnostics(env):
    import bench
    from bench.commands.diagnose import run_diagnostics

    t = bench.train("polarizing", "fashion_mnist", "smoke", 0, env=env)
    hist = t.meta["history"]
    assert [r["stage"] for r in hist] == [1, 1, 2, 2, 3]
    assert [r["epoch"] for r in hist if "hist" in r] == [2, 4, 5]  # the end of each stage
    assert sum(hist[-1]["hist"]) == 200 * 25 * 28 * 28  # every monitor activation lies in [-1, 1]
    assert hist[-1]["test_acc"] > 0.3  # chance is 0.1
    assert 0 <= t.meta["flags"]["danger_frac"] <= 1 and set(t.meta["flags"]["danger_frac_by_stage"]) == {"1", "2", "3"}
    out = t.model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)

    (row,) = bench.run(defense="polarizing", attack="fgsm", dataset="fashion_mnist", profile="smoke", n_test=50, env=env)
    assert "non-differentiable" in row["warnings"]  # the harness tells the reader the quantiser is BPDA'd
    assert json.loads(row["flags"])["danger_frac"] == t.meta["flags"]["danger_frac"]

    summary = run_diagnostics(env, ["polarizing"], "fashion_mnist", "smoke", 0, n=50)
    files = summary["defenses"]["polarizing"]["files"]
    assert len(files) == 4
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # the summary file names its figures relative to its own folder (no machine path in a copied or committed one)
    folder = Path(summary["summary_path"]).parent
    written = json.loads((folder / "summary.json").read_text())["defenses"]["polarizing"]["files"]
    assert written == [Path(f).relative_to(folder).as_posix() for f in files]
