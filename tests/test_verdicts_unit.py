"""The verdict checks (bench/verdicts/cell.py) on tiny models built here: each check fires on its planted case and
stays quiet on an honest model. Seconds, no data set."""
import torch
import torch.nn as nn

from bench.pgd import PGDSettings, run_pgd
from bench.verdicts import (Probe, VerdictSettings, dead_gradients, finalize, merge_probes, paired_excess,
                            to_column, from_column, worst)

S = VerdictSettings()
PGD = {"gradient_based": True, "eot": 1, "loss": "ce", "backward": "autograd"}


class _Attack:  # what the probes read of an attack
    def __init__(self, loss="ce", norm="linf", eps=8 / 255):
        self.params = type("P", (), {"loss": loss, "kappa": 50.0, "backward": "autograd"})()
        self.norm, self.eps = norm, eps


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class _Fn(nn.Module):
    def __init__(self, net, fn):
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, x):
        return self.fn(self.net, x)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 2, 2, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def _checks(model, atk=None, traits=PGD):
    x, _ = _data()
    with torch.no_grad():  # the harness probes correctly classified points only
        y = _net()(x).argmax(1)
    p = Probe()
    p.model_probe(model, x, S)
    p.gradient_probe(model, x, y, atk or _Attack(), None, S)
    return finalize(p.state, S, traits)


def test_dead_gradients_counts_zero_nan_inf_and_vanishing():
    g = torch.ones(5, 10)
    g[1] = 0
    g[2, 3] = float("nan")
    g[3, 0] = float("inf")
    g[4] = 1e-14
    assert dead_gradients(g, 1e-12).tolist() == [False, True, True, True, True]


def test_honest_model_gets_no_flag():
    checks = _checks(_net())
    assert {k: c["verdict"] for k, c in checks.items()}["gradient_health"] == "pass"
    assert checks["randomness"]["verdict"] == "pass" and checks["output_form"]["verdict"] == "pass"
    assert worst(checks) in ("pass", "skip")


def test_rounded_input_fails_gradient_health():
    checks = _checks(_Fn(_net(), lambda n, x: n(torch.round(x * 15) / 15)))
    assert checks["gradient_health"]["verdict"] == "fail" and checks["gradient_health"]["fraction"] == 1.0


def test_saturated_logits_fail_ce_but_not_the_margin_loss():
    model = _Fn(_net(), lambda n, x: n(x) * 1e6)
    assert _checks(model)["gradient_health"]["verdict"] == "fail"
    margin = _checks(model, _Attack("cw"), {**PGD, "loss": "cw"})
    assert margin["gradient_health"]["verdict"] == "pass"


def test_undeclared_noise_fails_randomness_without_eot_and_passes_with_it():
    model = _Fn(_net(), lambda n, x: n(x + 0.05 * torch.randn_like(x)))
    assert _checks(model)["randomness"]["verdict"] == "fail"
    assert _checks(model, traits={**PGD, "eot": 20})["randomness"]["verdict"] == "pass"
    assert _checks(model, traits={**PGD, "gradient_based": False})["gradient_health"]["verdict"] == "skip"


def test_probabilities_fail_output_form():
    assert _checks(_Fn(_net(), lambda n, x: n(x).softmax(1)))["output_form"]["verdict"] == "fail"
    assert _checks(_Fn(_net(), lambda n, x: n(x).log_softmax(1)))["output_form"]["verdict"] == "pass"


def _trace_checks(step_size, steps=20):
    """PGD on a robust-ish linear model where eps is too small to fool most points."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = _data(200)
    with torch.no_grad():
        y = model(x).argmax(1)
    s = PGDSettings(eps=0.05, steps=steps, step_size=step_size, restarts=1)
    trace = {"vanishing": S.grad_vanishing, "window_fraction": S.incomplete_window}
    for q in model.parameters():
        q.requires_grad_(False)
    _, fooled = run_pgd(model, x, y, s, torch.Generator().manual_seed(0), trace=trace)
    p = Probe()
    p.trace(trace, ~fooled, S)
    return finalize(p.state, S, PGD)["incomplete_optimization"]


def test_incomplete_optimization_flags_a_too_small_step_and_passes_a_converged_one():
    weak = _trace_checks(step_size=0.05 / 40)  # 20 steps of eps/40: half the way to the boundary of the ball
    assert weak["verdict"] == "warn", weak
    good = _trace_checks(step_size=2.5 * 0.05 / 20)
    assert good["verdict"] == "pass", good


def test_single_step_attacks_skip_incomplete_optimization():
    assert _trace_checks(step_size=0.05, steps=1)["verdict"] == "skip"


def test_silent_success_is_a_warning():
    assert finalize({"silent": [5, 100]}, S, PGD)["silent_success"]["verdict"] == "warn"
    assert finalize({"silent": [0, 100]}, S, PGD)["silent_success"]["verdict"] == "pass"


def test_shard_probes_sum_to_the_unsharded_verdicts():
    a = {"grad_clean": [3, 64], "random_points": [0, 64], "random_spread": 1e-7, "steps": 10}
    b = {"grad_clean": [1, 64], "random_points": [0, 64], "random_spread": 2e-7, "steps": 10}
    merged = merge_probes([a, b])
    assert merged["grad_clean"] == [4, 128] and merged["random_spread"] == 2e-7
    assert finalize(merged, S, PGD)["gradient_health"]["fraction"] == 4 / 128


def test_checks_column_round_trips_and_tolerates_garbage():
    checks = finalize({"grad_clean": [0, 10]}, S, PGD)
    assert from_column(to_column(checks)) == checks
    assert from_column("") == {} and from_column("not json") == {}


def test_black_box_rule_needs_significance_and_size_and_is_the_one_every_kind_applies():
    """"A black-box attack fools points every gradient attack left robust", beyond the noise: the audit, the suites
    and the checks across cells all decide it with bench.verdicts.rules.black_box_stronger."""
    import ast
    from pathlib import Path

    from bench.verdicts import black_box_stronger

    assert black_box_stronger(30, 2, 200, 0.05, 0.02) and paired_excess(30, 2, 200, 0.05, 0.02)
    assert not black_box_stronger(3, 1, 200, 0.05, 0.02)  # too few to tell
    assert not black_box_stronger(2, 30, 200, 0.05, 0.02)  # the other way round
    assert not black_box_stronger(4, 0, 200, 0.05, 0.02)  # significant (p = 1/16) but only 2 % of the points
    assert black_box_stronger(5, 0, 200, 0.05, 0.02)
    pkg = Path(__file__).resolve().parents[1] / "bench" / "verdicts"
    for name in ("audit_checks", "suite_checks", "cross_cell"):
        used = {n.id for n in ast.walk(ast.parse((pkg / f"{name}.py").read_text())) if isinstance(n, ast.Name)}
        assert "black_box_stronger" in used, name


def test_shipped_incomplete_threshold_separates_the_measured_quick_cells():
    """bench.toml's incomplete_warn judged against what was measured on the zoo's quick models
    (results/measured/incomplete_threshold_quick.json): every cell whose 5x-steps rerun fooled more points and none
    back must warn (0.2 passed HaH's 14.8 %), and every cell with at most 1 % of its survivors rising must pass."""
    import json
    from pathlib import Path

    from bench.config import load_config

    root = Path(__file__).resolve().parents[1]
    s = load_config(root / "bench.toml").verdicts
    cells = json.loads((root / "results/measured/incomplete_threshold_quick.json").read_text())["cells"]
    real = [c for c in cells if c.get("steps_x5_rerun", {}).get("more_fooled_by_x5", 0) > 0
            and c["steps_x5_rerun"]["fooled_by_base_only"] == 0]
    quiet = [c for c in cells if c["still_rising"] <= 0.01]
    assert len(real) >= 6 and len(quiet) >= 8, (len(real), len(quiet))
    for c in real + quiet:
        n = c["survivors"]
        state = {"incomplete": [round(c["still_rising"] * n), n], "steps": 40}
        verdict = finalize(state, s, PGD)["incomplete_optimization"]["verdict"]
        assert verdict == ("warn" if c in real else "pass"), (c["defense"], c["attack"], c["still_rising"], verdict)


def test_audit_runs_its_single_step_and_black_box_attacks_at_the_audited_threat_model(tmp_path):
    """Whatever the entries' own budgets (fgsm, square and transfer_natural are Linf 8/255 entries), the audit's
    check 9 and 10 attacks run at the audited norm and eps; they used to be skipped off Linf 8/255, which left
    a zero-gradient defense audited at L2 with no attack that needs no gradient."""
    from pathlib import Path

    from bench.audit import variants
    from bench.runner import Env

    repo = Path(__file__).resolve().parent.parent
    env = Env.create(config=repo / "bench.toml", data_root=repo, device="cpu", results_dir=tmp_path)
    for norm, eps, base_name in [("l2", 0.5, "pgd_l2"), ("linf", 2 / 255, "pgd_linf"), ("l1", 12.0, "pgd_l1")]:
        res = env.cfg.attack(base_name, "cifar10", "quick")
        base = res.cls(type(res.params).model_validate({**res.params.model_dump(), "eps": eps}))
        plan = {v.label: v for v in variants(env, base, None, "cifar10", "quick", norm, eps, 3 * 32 * 32)}
        for name in ("fgsm", "square", "transfer_natural"):
            p = plan[name].atk.params
            assert (p.norm, p.eps) == (norm, eps), (name, norm, p.norm, p.eps)


# ---------------------------------------------------------------- shattered gradients (finite, non-zero, useless)

def _wiggle(n, x):  # planted_wiggle: quantised input plus a high-frequency term whose derivative is all there is
    return n(torch.round(x * 15) / 15 + 1e-3 * torch.sin(1e4 * x))


def _scrambled(n, x):  # planted_scrambled_backward: rounding with a random-looking surrogate gradient
    from planted.masking import _ScrambledRound

    return n(_ScrambledRound.apply(x, 15.0))


def _lastbit(n, x):  # planted_lastbit_noise: benign noise in the last bits of the logits
    z = n(x)
    return z + 1e-7 * z.detach().abs().amax(1, keepdim=True) * torch.randn_like(z)


def test_shattered_gradients_fail_and_honest_gradients_pass_in_every_norm():
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5), ("l1", 12.0)):
        honest = _checks(_net(), _Attack(norm=norm, eps=eps))["shattered_gradients"]
        assert honest["verdict"] == "pass" and honest["fraction"] <= S.shattered_warn, (norm, honest)
        for fn in (_wiggle, _scrambled):
            checks = _checks(_Fn(_net(), fn), _Attack(norm=norm, eps=eps))
            assert checks["shattered_gradients"]["verdict"] == "fail", (norm, fn.__name__, checks)
            assert checks["gradient_health"]["verdict"] == "pass", checks  # finite, non-zero: only this check sees it


def test_shattered_check_leaves_the_other_kinds_to_their_own_checks():
    """Zero gradients (nothing to test), a stochastic model (noisy loss) and a gradient-free attack: skip, never a
    second fail beside the check that names the cause; benign last-bit noise: pass everywhere."""
    assert _checks(_Fn(_net(), lambda n, x: n(torch.round(x * 15) / 15)))["shattered_gradients"]["verdict"] == "skip"
    noisy = _checks(_Fn(_net(), lambda n, x: n(x + 0.05 * torch.randn_like(x))))
    assert noisy["randomness"]["verdict"] == "fail" and noisy["shattered_gradients"]["verdict"] == "skip"
    assert _checks(_net(), traits={**PGD, "gradient_based": False})["shattered_gradients"]["verdict"] == "skip"
    assert _checks(_net(), _Attack(eps=None))["shattered_gradients"]["verdict"] == "skip"  # a minimum-norm attack
    benign = _checks(_Fn(_net(), _lastbit))
    assert worst(benign) == "pass", benign


def test_shattered_threshold_fails_strongly_and_warns_in_between():
    assert finalize({"grad_useless": [10, 64]}, S, PGD)["shattered_gradients"]["verdict"] == "fail"
    assert finalize({"grad_useless": [4, 64]}, S, PGD)["shattered_gradients"]["verdict"] == "warn"
    assert finalize({"grad_useless": [3, 64]}, S, PGD)["shattered_gradients"]["verdict"] == "pass"


def test_shipped_shattered_thresholds_separate_the_measured_models():
    """bench.toml's shattered_* judged against what was measured (results/measured/shattered_gradients.json, 64
    points per model and attack at the shipped step): every honest model passes, every planted shattered one
    (and the misleading fixed-pattern backward) fails, in Linf, with the margin loss and in L2."""
    import json
    from pathlib import Path

    from bench.config import load_config

    root = Path(__file__).resolve().parents[1]
    s = load_config(root / "bench.toml").verdicts
    rows = json.loads((root / "results/measured/shattered_gradients.json").read_text())["rows"]
    honest = {"natural", "pgd_at", "trades", "rfgsm", "hah", "vgg16", "planted_lastbit_noise"}
    shattered = {"planted_wiggle", "planted_scrambled_backward", "planted_misleading_backward"}
    seen = set()
    for r in rows:
        useless = r["by_step"][f"{s.shattered_step:g}"]["useless"]
        if r["defense"] not in honest | shattered or not useless:
            continue
        verdict = finalize({"grad_useless": useless}, s, PGD)["shattered_gradients"]["verdict"]
        expected = "pass" if r["defense"] in honest else "fail"
        assert verdict == expected, (r["defense"], r["profile"], r["attack"], useless, verdict)
        seen.add((r["defense"], r["attack"]))
    assert len(seen) == 3 * len(honest | shattered), sorted(seen)
