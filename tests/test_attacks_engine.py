"""Fast checks of the attack engine's finer points and of the white-box plug-ins on tiny models (the strength
validation on the real smoke model lives in test_attack_validation.py)."""
import pytest
import torch
import torch.nn as nn

from bench.attack import AttackContext, PassCounter, perturbation_norm
from bench.pgd import PGDSettings, enforce_budget, random_start, run_pgd, step


def _model(scale=1.0, d=3 * 8 * 8):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        m[3].weight.mul_(scale)
        m[3].bias.mul_(scale)
    return m


def _data(n=64, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _correct(m, x, y):
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    return x[ok], y[ok]


class _Defense:
    """The attack-facing traits of a defense, without a trained model."""

    name = "fake"
    non_differentiable: tuple = ()
    surrogates: tuple = ()
    stochastic = False

    def surrogate(self, model, spec):
        import contextlib

        return contextlib.nullcontext(model)


def _ctx(defense=None, eval_model=None):
    return AttackContext(defense=defense or _Defense(), device=torch.device("cpu"), seed=0, batch_size=64,
                         eval_model=eval_model)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_is_seeded_inside_the_ball_and_box(norm):
    x, _ = _data(16)
    eps = {"linf": 8 / 255, "l2": 0.5, "l1": 5.0}[norm]
    torch.manual_seed(123)  # the global RNG must not matter
    a = random_start(x, norm, eps, torch.Generator().manual_seed(3))
    torch.manual_seed(456)
    b = random_start(x, norm, eps, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert (perturbation_norm(a, norm) <= eps + 1e-5).all()
    assert ((x + a) >= 0).all() and ((x + a) <= 1).all()
    assert (perturbation_norm(a, norm) > 0).all()


def test_saturated_softmax_still_gives_a_direction():
    """Logits 3000x too large: the float32 CE gradient is exactly zero, the engine's float64 one is not."""
    m = _model(scale=3000.0)
    x, _ = _data(128)
    with torch.no_grad():
        y = m(x).argmax(1)  # the model's own labels: every point starts correct and hugely confident
    xr = x.clone().requires_grad_(True)
    (g32,) = torch.autograd.grad(nn.functional.cross_entropy(m(xr), y, reduction="sum"), xr)
    saturated = g32.flatten(1).abs().sum(1) == 0
    assert saturated.sum() >= 10, "the test needs points whose float32 gradient vanishes"
    s = PGDSettings(eps=0.05, steps=20, step_size=0.01, random_start=False)
    _, fooled = run_pgd(m, x, y, s, torch.Generator().manual_seed(0))
    assert fooled[saturated].float().mean() > 0.5


def test_linf_step_is_projected_onto_ball_and_box():
    x, _ = _data(8)
    delta = torch.zeros_like(x)
    g = torch.randn_like(x)
    s = PGDSettings(eps=0.03, step_size=0.1)
    d = step(delta, g, x, s)
    assert d.abs().max() <= 0.03 + 1e-7
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()


def test_l1_step_is_sparse_and_moves_the_top_coordinates():
    x = torch.full((2, 3, 8, 8), 0.5)
    g = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s = PGDSettings(norm="l1", eps=10.0, step_size=1.0, l1_sparsity=0.95)
    d = step(torch.zeros_like(x), g, x, s)
    k = round(0.05 * 192)
    assert ((d != 0).flatten(1).sum(1) == k).all()
    top = g.flatten(1).abs().topk(k, dim=1).indices
    assert (d.flatten(1).gather(1, top).sign() == g.flatten(1).gather(1, top).sign()).all()


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("l1", 3.0)])
def test_enforce_budget_repairs_rounding(norm, eps):
    x, _ = _data(32)
    d = torch.randn_like(x)
    d = d * (eps / perturbation_norm(d, norm)).view(-1, 1, 1, 1) * 1.00001
    xa = (x + d).clamp(0, 1)
    enforce_budget(xa, x, norm, eps)
    assert (perturbation_norm(xa - x, norm) <= eps).all()
    assert xa.min() >= 0 and xa.max() <= 1


def test_without_early_exit_every_point_pays_every_step():
    m = _model()
    x, y = _correct(m, *_data(128))
    counter = PassCounter(m)
    s = PGDSettings(eps=1.0, steps=5, step_size=0.1, restarts=3, early_stop=False)
    _, fooled = run_pgd(counter, x, y, s, torch.Generator().manual_seed(0))
    assert fooled.all()
    assert counter.backward_images == 5 * 3 * len(y) and counter.forward_images == 6 * 3 * len(y)


def test_more_restarts_and_steps_only_add_fooled_points():
    """The first restart/steps of a longer run replay the shorter run exactly (same seed), and any fooling
    iterate is kept: the fooled set can only grow."""
    m = _model()
    x, y = _correct(m, *_data(256))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    _, f1 = run_pgd(m, x, y, PGDSettings(eps=0.03, steps=5, step_size=0.008, restarts=1), g())
    _, f3 = run_pgd(m, x, y, PGDSettings(eps=0.03, steps=5, step_size=0.008, restarts=4), g())
    _, f_long = run_pgd(m, x, y, PGDSettings(eps=0.03, steps=20, step_size=0.008, restarts=1), g())
    assert 0 < f1.sum() < len(y)
    assert (f3 | ~f1).all() and (f_long | ~f1).all()


def test_replicas_keep_the_highest_loss_iterate():
    m = _model()
    x, y = _correct(m, *_data(64))
    s = PGDSettings(eps=0.004, steps=3, step_size=0.002, restarts=4, batch_restarts=4)
    xa, fooled = run_pgd(m, x, y, s, torch.Generator().manual_seed(0))
    robust = ~fooled
    assert robust.any()
    with torch.no_grad():
        kept = nn.functional.cross_entropy(m(xa[robust]), y[robust], reduction="none")
        clean = nn.functional.cross_entropy(m(x[robust]), y[robust], reduction="none")
    assert (kept >= clean - 1e-6).all()


def test_stochastic_defense_is_judged_by_its_ensemble():
    """A model whose single passes are noisy but whose ensemble (the judge) is the clean model: the verdict
    must come from the judge, also for the final iterate."""
    base = _model()
    x, y = _correct(base, *_data(128))

    class Noisy(nn.Module):
        def forward(self, inp):
            return base(inp) + 5 * torch.randn(inp.shape[0], 10)

    judge_calls = []

    def judge(xa, ya):
        judge_calls.append(len(ya))
        return base(xa).argmax(1) != ya

    s = PGDSettings(eps=0.05, steps=5, step_size=0.01, restarts=2, eot_samples=4, eot_mode="normalized")
    xa, fooled = run_pgd(Noisy(), x, y, s, torch.Generator().manual_seed(0), judge=judge)
    with torch.no_grad():
        assert torch.equal(fooled, base(xa).argmax(1) != y)
    assert judge_calls


def test_pgd_plugin_warns_about_masked_gradients_and_missing_eot():
    from attacks.pgd import PGDLinf

    class Masked(_Defense):
        name = "masked"
        non_differentiable = ("quantizer",)
        surrogates = ("identity",)
        stochastic = True

    m = _model()
    x, y = _correct(m, *_data(32))
    ctx = _ctx(Masked(), eval_model=m)
    atk = PGDLinf(PGDLinf.Params(steps=2, restarts=1))
    out = atk.run(m, x, y, ctx)
    text = " ".join(ctx.warnings)
    assert "possible gradient masking" in text and "identity" in text and "no EOT" in text
    assert all(q.requires_grad for q in m.parameters()), "weights must be unfrozen after the attack"
    assert out.x_adv.shape == x.shape


def test_a_score_based_attack_gets_no_masked_gradient_warning_but_keeps_the_randomness_one():
    """Square reads scores only: "the attack used plain autograd: possible gradient masking" would be a false
    alarm on every defense that declares a non-differentiable part (it was, on the sparse front end's suite)."""
    from attacks._whitebox import gradient_warnings

    class Masked(_Defense):
        name = "masked"
        non_differentiable = ("quantizer",)
        surrogates = ("identity",)
        stochastic = True

    for uses_gradients, masking in [(True, True), (False, False)]:
        ctx = _ctx(Masked())
        gradient_warnings(ctx, "autograd", 1, uses_gradients=uses_gradients)
        text = " ".join(ctx.warnings)
        assert ("possible gradient masking" in text) is masking and "no EOT" in text


def test_step_size_relative_to_eps_and_paper_defaults():
    from attacks.pgd import BIM, FGSM, PGDL1

    assert PGDL1.Params(eps=30, step_size="eps/8").settings().step_size == pytest.approx(3.75)
    f = FGSM.Params().settings()
    assert f.steps == 1 and f.step_size == pytest.approx(8 / 255) and not f.random_start
    assert not BIM.Params().settings().random_start


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0), ("l1", 4.0)])
def test_apgd_records_which_sub_attack_fooled_each_point(norm, eps):
    from attacks.autoattack import APGDCustom

    m = _model()
    x, y = _correct(m, *_data(64))
    ctx = _ctx()
    atk = APGDCustom(APGDCustom.Params(norm=norm, eps=eps, attacks=["apgd-ce", "apgd-t"], n_iter=10,
                                       n_target_classes=3))
    out = atk.run(m, x, y, ctx)
    with torch.no_grad():
        assert torch.equal(out.fooled, m(out.x_adv).argmax(1) != y)
    by = out.extra["fooled_by"]
    assert len(by) == len(y)
    assert all((b != "") == bool(f) for b, f in zip(by, out.fooled.tolist()))
    assert set(by) <= {"", "apgd-ce", "apgd-t"} and out.fooled.any()
    assert sum(ctx.info["fooled_by_counts"].values()) == int(out.fooled.sum())
    assert (perturbation_norm(out.x_adv - x, norm) <= eps + 1e-6).all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1


def test_autoattack_standard_settings_and_global_rng_left_alone():
    from attacks.autoattack import AutoAttackStandard

    m = _model()
    x, y = _correct(m, *_data(32))
    ctx = _ctx()
    atk = AutoAttackStandard(AutoAttackStandard.Params(eps=0.02, n_iter=5, square_queries=20))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    out = atk.run(m, x, y, ctx)
    assert torch.equal(torch.rand(3), expected)
    info = ctx.info["autoattack"]
    assert info["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and info["version"] == "standard"
    assert info["apgd_t_targets"] == 9 and info["n_iter"] == 5 and info["square_queries"] == 20
    assert len(out.extra["fooled_by"]) == len(y)


def test_apgd_rejects_largereps_outside_l1():
    from attacks.autoattack import APGDCustom
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="use_largereps"):
        APGDCustom.Params(norm="linf", use_largereps=True)


def test_attack_entries_resolve_for_every_dataset_and_profile(env):
    for name in ("pgd_linf", "pgd_l2", "pgd_l1", "cw_linf", "pgd_eot", "fgsm", "bim", "autoattack", "apgd"):
        for dataset in ("cifar10", "mnist", "fashion_mnist"):
            for profile in ("smoke", "quick", "paper"):
                r = env.cfg.attack(name, dataset, profile)
                assert r.params.eps > 0
    paper = env.cfg.attack("autoattack", "cifar10", "paper").params
    assert (paper.version, paper.n_iter, paper.square_queries, paper.eps) == ("standard", 100, 5000, 8 / 255)


def test_perf_measure_runs_and_counts_passes():
    from bench.perf.engine import format_result, measure

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    x, y = _data(16)
    res = measure(m, x, y, eps=0.1, steps=2, repeats=1, c_steps=3, c_restarts=2)
    assert res.passes["no_early_exit"]["backward"] == 6
    assert res.passes["early_exit"]["backward"] <= 6
    assert set(res.ratios) >= {"a_ours_step_over_bare_forward_backward", "b_torchattacks_over_ours",
                               "b_foolbox_over_ours"}
    assert "(a)" in format_result(res) and all(q.requires_grad for q in m.parameters())


def test_a_forward_without_gradient_path_gives_no_crash_and_no_false_success():
    base = _model()
    for q in base.parameters():
        q.requires_grad_(False)
    x, y = _correct(base, *_data(64))

    class Detached(nn.Module):  # e.g. a defense that quantises its input with a non-differentiable op
        def forward(self, inp):
            return base(inp.detach())

    _, fooled = run_pgd(Detached(), x, y, PGDSettings(eps=1e-4, steps=3, step_size=1e-4),
                        torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not fooled.any() and (base(x).argmax(1) == y).all()


def test_channels_last_option_gives_the_same_attack():
    from attacks.pgd import PGDLinf

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x, y = _correct(m, *_data(64))
    runs = [PGDLinf(PGDLinf.Params(eps=0.02, steps=5, step_size=0.005, channels_last=cl)).run(m, x, y, _ctx())
            for cl in (False, True)]
    assert runs[1].x_adv.is_contiguous() and m[0].weight.is_contiguous()
    assert 0 < runs[0].fooled.sum() < len(y) and (runs[0].fooled != runs[1].fooled).sum() <= 1


@pytest.mark.slow
@pytest.mark.ci
def test_bench_perf_command_end_to_end(tmp_path, data_root):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "perf.json"
    p = subprocess.run([sys.executable, "-m", "bench.cli", "perf", "--random-init", "--n", "4", "--steps", "1",
                        "--repeats", "1", "--c-steps", "2", "--c-restarts", "2", "--threads", "1",
                        "--data-root", str(data_root), "--results-dir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, env={**os.environ, "BENCH_PROGRESS": "0"}, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "(a)" in p.stdout and "(b)" in p.stdout and "(c)" in p.stdout
    res = json.loads(out.read_text())
    assert res["n"] == 4 and res["passes"]["no_early_exit"]["backward"] == 4
