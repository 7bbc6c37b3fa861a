"""Strength validation of the white-box attacks on real models: the smoke natural ResNet-32 on
CIFAR-10 (~100 correctly classified test images) and a small PGD-trained MLP on MNIST.

Against the reference implementations (torchattacks, foolbox) on the same model, inputs and settings, our
accuracy must be at most theirs + 1 point; budgets must hold exactly; accuracy must fall with eps, steps and
restarts; AutoAttack must break the natural model and agree with our PGD on an adversarially trained one.
Budgets are chosen where the natural model is partly robust, so that a weaker attack would show."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.autoattack import APGDCustom, AutoAttackStandard
from attacks.pgd import CWLinf, PGDL1, PGDL2, PGDLinf
from bench.attack import AttackContext, perturbation_norm
from bench.data import load_subset
from bench.runner import predict

pytestmark = pytest.mark.slow
CI = pytest.mark.ci  # the strength validation runs in CI (~5 min): every test but the quick profile's comparison
POINT = 0.01  # one accuracy point


@pytest.fixture(scope="module")
def smoke(natural_smoke, data_root):
    model = natural_smoke.model.eval()
    x, y = load_subset("cifar10", "test", data_root, 200, 0)
    return natural_smoke.defense, model, x, y, predict(model, x, "cpu", 200) == y


@pytest.fixture(scope="module")
def batch(smoke):
    """The first 100 correctly classified of 200 CIFAR-10 test images of the smoke natural model."""
    defense, model, x, y, correct = smoke
    return defense, model, x[correct][:100], y[correct][:100]


@pytest.fixture(scope="module")
def seen(smoke):
    """seen[k] = how many test images it takes to collect the first k correctly classified ones, to turn an
    accuracy on attacked (correct) points into the harness's robust accuracy over all test images."""
    return [0] + (smoke[4].nonzero().squeeze(1) + 1).tolist()


def _ours(batch, cls, **params):
    """Run one of our plug-ins like the harness does; check box and budget; return (accuracy, x_adv)."""
    defense, model, x, y = batch
    atk = cls(cls.Params(**params))
    ctx = AttackContext(defense=defense, device=torch.device("cpu"), seed=0, batch_size=len(y), eval_model=model)
    out = atk.run(model, x, y, ctx)
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (perturbation_norm(out.x_adv - x, atk.norm) <= atk.eps + 1e-6).all(), f"{atk.norm} budget exceeded"
    return _accuracy(model, out.x_adv, y), out


def _accuracy(model, x_adv, y) -> float:
    return (predict(model, x_adv, "cpu", 200) == y).float().mean().item()


def _foolbox(batch, attack, eps):
    import foolbox as fb

    _, model, x, y = batch
    _, x_adv, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    return _accuracy(model, x_adv, y)


@CI
def test_linf_at_least_as_strong_as_torchattacks_and_foolbox(batch):
    import foolbox as fb
    import torchattacks

    _, model, x, y = batch
    eps, alpha, steps = 1 / 255, 0.25 / 255, 10
    ours, _ = _ours(batch, PGDLinf, eps=eps, steps=steps, step_size=alpha, restarts=1)
    torch.manual_seed(0)
    ta = _accuracy(model, torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y), y)
    fbx = _foolbox(batch, fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True), eps)
    print(f"Linf eps 1/255, 10 steps: ours {ours:.2%}, torchattacks PGD {ta:.2%}, foolbox LinfPGD {fbx:.2%}")
    assert 0.2 < ta < 0.9, f"eps should leave the model partly robust (torchattacks {ta:.2%})"
    assert ours <= ta + POINT and ours <= fbx + POINT, f"ours {ours:.2%}, torchattacks {ta:.2%}, foolbox {fbx:.2%}"


@CI
@pytest.mark.parametrize("profile", ["smoke", "paper_cpu", "quick", "paper"])
def test_pgd_linf_profile_step_sizes_travel_madrys_distance(profile):
    """Every profile's pgd_linf steps travel at least Madry's 2.5 eps (the rule the empirical comparison below
    checks in practice); config only, so CI checks every profile without attacking."""
    from bench.config import load_config

    entry = load_config().attack("pgd_linf", "cifar10", profile)
    for k in (1, 2, 8):
        eps = k / 255
        step = entry.cls.Params(**{**entry.params.model_dump(), "eps": eps}).settings().step_size
        assert entry.params.steps * step >= 2.5 * eps * (1 - 1e-9), \
            f"{profile}: {entry.params.steps} steps of {step:.4g} travel < 2.5 eps at {k}/255"


# the quick comparison (40 steps x 3 budgets x 3 implementations) costs minutes: slow only; smoke runs in CI
@pytest.mark.parametrize("profile", [pytest.param("smoke", marks=CI), "quick"])
def test_pgd_linf_profile_defaults_as_strong_as_torchattacks_and_foolbox(batch, profile):
    """The step size bench.toml gives pgd_linf in the smoke and quick profiles (resolved from the real
    entry, one restart) leaves at most 1 point more than torchattacks PGD and foolbox LinfPGD with the same steps
    and Madry's step 2.5 eps / steps, random start, at 1, 2 and 8/255. (The old smoke default, 10 steps of eps/8,
    failed this at 2/255.)"""
    import foolbox as fb
    import torchattacks

    from bench.config import load_config

    _, model, x, y = batch
    entry = load_config().attack("pgd_linf", "cifar10", profile)
    steps = entry.params.steps
    for k in (1, 2, 8):
        eps = k / 255
        ours, _ = _ours(batch, entry.cls, **{**entry.params.model_dump(), "eps": eps, "restarts": 1})
        torch.manual_seed(0)
        ta = _accuracy(model, torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                               random_start=True)(x, y), y)
        torch.manual_seed(0)
        fbx = _foolbox(batch, fb.attacks.LinfPGD(rel_stepsize=2.5 / steps, steps=steps, random_start=True), eps)
        step = entry.cls.Params(**{**entry.params.model_dump(), "eps": eps}).settings().step_size
        assert steps * step >= 2.5 * eps * (1 - 1e-9), f"{profile}: {steps} steps of {step:.4g} travel < 2.5 eps"
        print(f"pgd_linf {profile} ({steps} steps of {step * 255:.3g}/255) at {k}/255: ours {ours:.2%}, "
              f"torchattacks PGD {ta:.2%}, foolbox LinfPGD {fbx:.2%}")
        assert ours <= ta + POINT and ours <= fbx + POINT, \
            f"{profile} at {k}/255: ours {ours:.2%}, torchattacks {ta:.2%}, foolbox {fbx:.2%}"


@CI
def test_l2_at_least_as_strong_as_foolbox(batch):
    import foolbox as fb

    eps, steps = 0.2, 10
    ours, _ = _ours(batch, PGDL2, eps=eps, steps=steps, step_size=eps / 4, restarts=1)
    fbx = _foolbox(batch, fb.attacks.L2PGD(abs_stepsize=eps / 4, steps=steps, random_start=True), eps)
    print(f"L2 eps 0.2, 10 steps: ours {ours:.2%}, foolbox L2PGD {fbx:.2%}")
    assert 0.2 < fbx < 0.9
    assert ours <= fbx + POINT, f"ours {ours:.2%}, foolbox L2PGD {fbx:.2%}"


@CI
def test_l1_at_least_as_strong_as_foolbox_l1pgd_and_sparse_l1(batch):
    """Against foolbox's strongest L1 attack (Sparse L1 Descent, the SLIDE step) and its dense L1PGD."""
    import foolbox as fb

    eps, steps = 2.0, 10
    ours, _ = _ours(batch, PGDL1, eps=eps, steps=steps, step_size=eps / 4, restarts=1)
    sparse = _foolbox(batch, fb.attacks.SparseL1DescentAttack(abs_stepsize=eps / 4, steps=steps), eps)
    dense = _foolbox(batch, fb.attacks.L1PGD(abs_stepsize=eps / 4, steps=steps, random_start=True), eps)
    print(f"L1 eps 2, 10 steps: ours {ours:.2%}, foolbox SparseL1Descent {sparse:.2%}, L1PGD {dense:.2%}")
    assert 0.2 < sparse < 0.95
    assert ours <= sparse + POINT and ours <= dense + POINT, \
        f"ours {ours:.2%}, foolbox SparseL1 {sparse:.2%}, L1PGD {dense:.2%}"


@CI
@pytest.mark.parametrize("cls", [PGDLinf, CWLinf], ids=["pgd_linf", "cw_linf"])
def test_natural_model_falls_at_8_255(batch, seen, cls):
    """000 Table 1, natural row: 0.00. The 3-epoch smoke model is smoother than the paper's and keeps ~1-2 % of
    the test set (AutoAttack keeps 1 %), so: robust accuracy over the examined test images <= 3 %."""
    acc, _ = _ours(batch, cls, eps=8 / 255, steps=40, restarts=1)
    k = len(batch[3])
    assert acc * k / seen[k] <= 3 * POINT


@CI
def test_accuracy_is_monotone_in_eps(batch):
    accs = [_ours(batch, PGDLinf, eps=e / 255, steps=10, step_size="eps/4", restarts=1)[0]
            for e in (0.25, 1, 4)]
    assert accs == sorted(accs, reverse=True), accs
    assert accs[0] > accs[-1] + 0.3


@CI
def test_more_steps_and_restarts_never_increase_accuracy(batch):
    """Same seed: the longer run replays the shorter one first and keeps any fooling iterate, so every point
    fooled by the short run is fooled by the long one."""
    base = dict(eps=0.5 / 255, step_size=0.25 / 255)
    short, out_short = _ours(batch, PGDLinf, steps=5, restarts=1, **base)
    longer, out_long = _ours(batch, PGDLinf, steps=10, restarts=1, **base)
    more, out_more = _ours(batch, PGDLinf, steps=5, restarts=2, **base)
    assert longer <= short and more <= short
    assert (out_long.fooled | ~out_short.fooled).all() and (out_more.fooled | ~out_short.fooled).all()
    assert longer < 1 and short > 0


@CI
def test_autoattack_breaks_the_natural_model(batch, seen):
    """The standard version at full strength (100 iterations, 5000 Square queries) on the first 50 points."""
    defense, model, x, y = batch
    k = 50
    acc, out = _ours((defense, model, x[:k], y[:k]), AutoAttackStandard, eps=8 / 255)
    assert acc * k / seen[k] <= 3 * POINT
    assert all(out.extra["fooled_by"][i] for i in out.fooled.nonzero().squeeze(1).tolist())


def _pgd_trained_mlp(data_root, eps):
    """A small MLP adversarially trained on MNIST (PGD-5, last iterate) — robust enough to tell attacks apart."""
    from bench.pgd import PGDSettings, random_start, step

    x, y = load_subset("mnist", "train", data_root, 6000, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    s = PGDSettings(eps=eps, steps=5, step_size=eps / 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 100):
            xb, yb = x[perm[i:i + 100]], y[perm[i:i + 100]]
            delta = random_start(xb, "linf", eps, gen)
            for _ in range(s.steps):
                delta.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(xb + delta), yb), delta)
                delta = step(delta.detach(), g, xb, s)
            opt.zero_grad()
            F.cross_entropy(model(xb + delta), yb).backward()
            opt.step()
    return model.eval()


@CI
def test_autoattack_agrees_with_our_pgd_on_an_adversarially_trained_model(data_root):
    """AutoAttack is at most a couple of points below our PGD suite (per-sample worst case of pgd_linf and
    cw_linf, as the leaderboard's worst-case column counts it), and not above it.

    On this model the CE loss alone is ~4 points weaker than any margin loss (ours CW, APGD-DLR, APGD-T all
    agree within a point; so does APGD-CE with CE) — the reason the papers' suite has both. APGD-CE + APGD-T
    stand in for the standard version: here FAB-T and Square fool no further point (measured with the full
    standard version) and would triple the test's time."""
    eps = 0.1
    model = _pgd_trained_mlp(data_root, eps)
    x, y = load_subset("mnist", "test", data_root, 300, 0)
    correct = predict(model, x, "cpu", 300) == y
    batch = (None, model, x[correct], y[correct])  # a plain model: no defense traits
    clean = correct.float().mean().item()
    _, ce = _ours(batch, PGDLinf, eps=eps, steps=40, step_size="eps/8", restarts=5)
    _, cw = _ours(batch, CWLinf, eps=eps, steps=40, step_size="eps/8", restarts=5)
    aa, _ = _ours(batch, APGDCustom, eps=eps, attacks=["apgd-ce", "apgd-t"])
    pgd = (~(ce.fooled | cw.fooled)).float().mean().item() * clean  # robust accuracy over all 300 images
    aa *= clean
    print(f"MNIST PGD-trained MLP, eps 0.1, n = 300: our PGD-40 x 5 CE+CW {pgd:.2%}, APGD-CE + APGD-T {aa:.2%}")
    assert pgd > 0.4, f"the model should be robust (PGD accuracy {pgd:.2%})"
    assert aa <= pgd + POINT and pgd - aa <= 2 * POINT, f"PGD {pgd:.2%} vs AutoAttack (APGD-CE + APGD-T) {aa:.2%}"
