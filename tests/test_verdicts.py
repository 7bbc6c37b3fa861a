"""Verdicts on real cells: the smoke natural ResNet-32 behind planted tricks that declare nothing
(tests/planted/masking.py) must each be flagged by the right check on its pgd_linf smoke cell, the honest
natural model by none; bench audit must find the masking and report an adapted number near the truth.

The truth: every planted model is the natural network (same weights) behind a trick that leaves its decisions
almost unchanged, so its true robust accuracy is at most that of the natural network under the same attack,
evaluated through the trick (a transfer from the same network) — measured here, not assumed."""
import json
import shutil

import pytest
import torch

import planted.masking  # noqa: F401  (registers the planted defenses)
from bench.attack import AttackContext
from bench.data import load_subset
from bench.runner import Env, predict, run_cell

pytestmark = [pytest.mark.slow, pytest.mark.ci]
REPO_TOML = "bench.toml"
PLANTED = ("planted_round", "planted_saturated", "planted_noise", "planted_probs", "planted_misleading_backward",
           "planted_wiggle", "planted_scrambled_backward", "planted_lastbit_noise")


@pytest.fixture(scope="module")
def planted_env(natural_smoke, env, tmp_path_factory, data_root):
    """A config copy with the planted defenses wrapping the natural smoke network's weights (no training) and
    a cheaper audit; the natural checkpoint is shared with the session cache (the transfer surrogate)."""
    root = tmp_path_factory.mktemp("planted")
    weights = root / "natural.pt"
    torch.save(natural_smoke.model.state_dict(), weights)
    text = (env.cfg.path).read_text()
    text = text.replace('black_box = ["transfer_natural", "square"]', 'black_box = ["transfer_natural"]')
    text = text.replace("effort_factor = 5 ", "effort_factor = 3 ")
    for name in PLANTED:
        text += f'\n[defenses.{name}]\nweights = "{weights}"\nepochs = 0\n'
    (root / "bench.toml").write_text(text)
    (root / "cache").symlink_to(env.cache.root, target_is_directory=True)
    return Env.create(config=root / "bench.toml", data_root=data_root, device="cpu", results_dir=root)


def _checks(planted_env, defense, attack="pgd_linf"):
    row = run_cell(planted_env, defense, attack, "cifar10", "smoke", 0)
    return {k: v["verdict"] for k, v in json.loads(row["checks"]).items()}, row


@pytest.mark.parametrize("defense", ["natural", "planted_lastbit_noise"])
def test_honest_natural_model_gets_no_flag(planted_env, defense):
    """The natural network, and the same behind benign noise in the last bits of its logits."""
    for attack in ("pgd_linf", "cw_linf", "fgsm"):
        verdicts, _ = _checks(planted_env, defense, attack)
        assert not {k for k, v in verdicts.items() if v in ("warn", "fail")}, (attack, verdicts)
        assert verdicts["shattered_gradients"] == "pass", verdicts


@pytest.mark.parametrize("defense,check", [("planted_round", "gradient_health"),
                                           ("planted_saturated", "gradient_health"),
                                           ("planted_noise", "randomness"),
                                           ("planted_probs", "output_form"),
                                           ("planted_wiggle", "shattered_gradients"),
                                           ("planted_scrambled_backward", "shattered_gradients"),
                                           ("planted_misleading_backward", "shattered_gradients")])
def test_each_planted_defense_is_flagged_by_its_check(planted_env, defense, check):
    verdicts, row = _checks(planted_env, defense)
    assert verdicts[check] == "fail", verdicts
    others = {k for k, v in verdicts.items() if v == "fail" and k != check}
    assert not others, verdicts


def test_shattered_gradients_fail_in_l2_and_pass_on_the_zoo_pgd_at_model(planted_env, env):
    """The shattered check in another norm (L2 0.6) on the planted models, and on an adversarially trained model
    (the zoo's quick PGD-AT, restored, not trained) it must stay quiet: a smooth loss surface is no masking."""
    for defense in ("planted_wiggle", "planted_scrambled_backward"):
        verdicts, _ = _checks(planted_env, defense, "pgd_l2")
        assert verdicts["shattered_gradients"] == "fail", (defense, verdicts)
    from bench.runner import attack_traits, train
    from bench.verdicts import Probe, finalize

    robust = train("pgd_at", "cifar10", "quick", 0, env=env)
    model = robust.model.eval()
    x, y = load_subset("cifar10", "test", env.data_root, 128, 0)
    keep = predict(model, x, "cpu", 128) == y
    for attack in ("pgd_linf", "pgd_l2"):
        res = env.cfg.attack(attack, "cifar10", "quick")
        atk = res.cls(res.params)
        p = Probe()
        first = p.gradient_probe(model, x[keep][:64], y[keep][:64], atk, robust.defense, env.cfg.verdicts)
        p.model_probe(model, x[keep][:64], env.cfg.verdicts, first)
        check = finalize(p.state, env.cfg.verdicts, attack_traits(atk))["shattered_gradients"]
        assert check["verdict"] == "pass", (attack, check)


def test_margin_loss_sees_through_saturated_logits(planted_env):
    verdicts, _ = _checks(planted_env, "planted_saturated", "cw_linf")
    assert verdicts["gradient_health"] != "fail", verdicts


def test_weak_old_smoke_step_is_not_converged_and_the_default_is(planted_env, natural_smoke):
    """10 steps of eps/8 (the old smoke default) at 2/255 must be flagged; the default must not."""
    from attacks.pgd import PGDLinf
    from bench.runner import attack_traits
    from bench.verdicts import Probe, finalize

    cfg = planted_env.cfg
    base = cfg.attack("pgd_linf", "cifar10", "smoke").params
    x, y = load_subset("cifar10", "test", planted_env.data_root, 200, 0)
    model = natural_smoke.model.eval()
    keep = predict(model, x, "cpu", 200) == y
    x, y = x[keep], y[keep]
    out = {}
    for label in ("old", "default"):
        dumped = {**base.model_dump(), "eps": 2 / 255}
        if label == "old":
            dumped["step_size"] = "eps/8"
        atk = PGDLinf(type(base).model_validate(dumped))
        ctx = AttackContext(defense=natural_smoke.defense, device=torch.device("cpu"), seed=0, batch_size=len(y),
                            eval_model=model, trace={"vanishing": 1e-12, "window_fraction": 0.1})
        res = atk.run(model, x, y, ctx)
        robust = predict(model, res.x_adv, "cpu", 200) == y
        probe = Probe()
        probe.trace(ctx.trace, robust, cfg.verdicts)
        out[label] = finalize(probe.state, cfg.verdicts, attack_traits(atk))["incomplete_optimization"]
    assert out["old"]["verdict"] == "warn", out
    assert out["default"]["verdict"] == "pass", out


def _truth(planted_env, natural_smoke, defense, n, norm="linf", eps=8 / 255):
    """Robust accuracy of the planted model on the natural network's own PGD (CW loss, 20 steps of eps/8)
    examples in the given norm and eps."""
    from attacks.pgd import CWLinf
    from bench.runner import train

    planted = train(defense, "cifar10", "smoke", 0, env=planted_env)
    x, y = load_subset("cifar10", "test", planted_env.data_root, n, 0)
    nat = natural_smoke.model.eval()
    atk = CWLinf(CWLinf.Params(norm=norm, eps=eps, steps=20, step_size="eps/8"))
    ctx = AttackContext(defense=natural_smoke.defense, device=torch.device("cpu"), seed=0, batch_size=n, eval_model=nat)
    x_adv = atk.run(nat, x, y, ctx).x_adv
    torch.manual_seed(0)
    with torch.no_grad():
        clean = planted.model(x).argmax(1) == y
        adv = planted.model(x_adv).argmax(1) == y
    return (clean & adv).float().mean().item()


@pytest.mark.parametrize("defense", ["planted_round", "planted_saturated", "planted_noise",
                                     "planted_misleading_backward"])
def test_audit_finds_the_masking_and_reports_an_adapted_number_near_the_truth(planted_env, natural_smoke, defense):
    from bench.audit import audit

    n = 100
    report = audit(planted_env, defense, "cifar10", "smoke", 0, n_test=n)
    truth = _truth(planted_env, natural_smoke, defense, n)
    original, adapted = report["original"]["robust_acc"], report["adapted"]["robust_acc"]
    assert report["verdict"] == "fail", report["checks"]
    assert adapted <= truth + 0.05, (original, adapted, truth)
    assert original - adapted >= 0.05, (original, adapted, truth)  # the adaptation found what the base attack missed
    if defense == "planted_misleading_backward":  # healthy-looking gradients: only the BPDA adaptation sees it
        assert report["checks"]["adaptation"]["verdict"] == "fail", report["checks"]


@pytest.mark.parametrize("threat_model", ["l2:0.5", "linf:2/255"])
def test_audit_off_the_transfer_entrys_budget_still_finds_zero_gradient_masking(planted_env, natural_smoke,
                                                                                threat_model):
    """A rounded input has no gradient, so only the audit's black-box attack sees through it. Its transfer
    attack's surrogate-side PGD is a Linf 8/255 entry: it must run at the audited threat model, not be skipped
    (when it was skipped, planted_round audited at L2 0.5 kept its masked number)."""
    from bench.audit import audit, parse_threat_model

    n = 100
    norm, eps = parse_threat_model(threat_model)
    # the black-box role alone (`bench audit --only black_box`): the full audit is the test above, at 8/255
    report = audit(planted_env, "planted_round", "cifar10", "smoke", 0, threat_model=threat_model, n_test=n,
                   only=("black_box",))
    assert set(report["variants"]) == {"base", "transfer_natural"}, report["variants"].keys()
    assert set(report["checks"]) == {"black_box"}, report["checks"]  # no check claims a pass it did not run
    transfer = report["variants"]["transfer_natural"]
    assert "skipped" not in transfer, transfer
    assert abs(transfer["eps"] - eps) < 1e-9, transfer
    truth = _truth(planted_env, natural_smoke, "planted_round", n, norm, eps)
    original, adapted = report["original"]["robust_acc"], report["adapted"]["robust_acc"]
    assert report["checks"]["black_box"]["verdict"] == "fail", report["checks"]
    assert adapted <= truth + 0.05, (original, adapted, truth)
    assert original - adapted >= 0.05, (original, adapted, truth)


def test_profile_audit_switch_audits_each_defense_after_its_cells_and_the_leaderboard_shows_it(planted_env):
    """[profiles.P] audit = true: `bench run` audits each defense once per threat model of its attacks (the
    iterative attack as the base, not FGSM), keeps an up-to-date report on re-run, and the leaderboard shows
    the adapted number beside the original."""
    from typer.testing import CliRunner

    from bench.audit import threat_models
    from bench.cli import app

    root = planted_env.store.root / "switch"
    root.mkdir()
    text = planted_env.cfg.path.read_text().replace("[profiles.smoke]\n", "[profiles.smoke]\naudit = true\n", 1)
    (root / "bench.toml").write_text(text)
    (root / "cache").symlink_to(planted_env.cache.root, target_is_directory=True)
    assert threat_models(planted_env, ["fgsm", "pgd_linf", "pgd_l2"], "cifar10", "smoke") == [
        ("pgd_linf", f"linf:{8 / 255!r}"), ("pgd_l2", "l2:0.6")]
    args = ["run", "-d", "planted_round", "-a", "pgd_linf", "-a", "fgsm", "--profile", "smoke", "--n-test", "40",
            "--plain", "--config", str(root / "bench.toml"), "--results-dir", str(root),
            "--data-root", str(planted_env.data_root), "--device", "cpu"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    (report_file,) = (root / "audit").glob("planted_round-cifar10-smoke-linf-*.json")
    report = json.loads(report_file.read_text())
    assert report["attack"] == "pgd_linf" and report["verdict"] == "fail" and report["n"] == 40
    assert report["adapted"]["robust_acc"] < report["original"]["robust_acc"]
    board = (root / "leaderboard.md").read_text()
    assert "audited (adapted)" in board
    line = next(ln for ln in board.splitlines() if ln.startswith("| planted_round"))
    assert f"Linf 8/255: {100 * report['adapted']['robust_acc']:.1f} (was " in line, line
    before = report_file.read_bytes()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "up to date" in second.output, second.output
    assert report_file.read_bytes() == before


def test_suite_flags_a_black_box_stage_that_beats_the_gradient_stages(planted_env):
    """On the rounding model (zero input gradients) a suite's Square stage fools what PGD could not: the suite row
    fails its black_box check; on the honest natural model the same suite passes it."""
    from bench.config import SuiteSpec
    from bench.suite import run_suite

    planted_env.cfg.suites["masking_probe"] = SuiteSpec(norm="linf", attacks=["pgd_linf", "square"], order="listed")
    verdict = {}
    for defense in ("planted_round", "natural"):
        row = run_suite(planted_env, defense, "masking_probe", "cifar10", "smoke", 0, 100)
        verdict[defense] = json.loads(row["checks"])["black_box"]
    assert verdict["planted_round"]["verdict"] == "fail", verdict
    assert "square fools" in verdict["planted_round"]["reason"]
    assert verdict["natural"]["verdict"] == "pass", verdict


def test_leaderboard_flags_a_transfer_cell_that_beats_the_gradient_cell(planted_env):
    """Independent cells, no suite and no audit: on the rounding model the transfer_natural cell fools what the
    pgd_linf cell could not, so the per-threat-model leaderboard fails its black_box check and says unreliable;
    the honest natural model's same two cells pass it. The verdict comes from the manifests' attack_traits."""
    from bench.report import threat_board
    from bench.report.tables import Results

    for defense in ("planted_round", "natural"):
        for attack in ("pgd_linf", "transfer_natural"):
            run_cell(planted_env, defense, attack, "cifar10", "smoke", 0)
    results = Results.load(planted_env.store.root)
    rows = [r for r in results.latest_rows(dataset="cifar10", profile="smoke")
            if r["defense"] == "planted_round" and r["attack"] in ("pgd_linf", "transfer_natural")]
    traits = {r["attack"]: results.manifest(r)["attack_traits"]["gradient_based"] for r in rows}
    assert traits == {"pgd_linf": True, "transfer_natural": False}, traits
    (tm,) = [tm for tm in threat_board.boards(results, "cifar10", "smoke") if tm[0] == "linf" and abs(tm[1] - 8 / 255) < 1e-6]
    entries = {e.defense: e for e in threat_board.boards(results, "cifar10", "smoke")[tm][0]}
    masked, honest = entries["planted_round"], entries["natural"]
    assert masked.cross["black_box"]["verdict"] == "fail" and masked.unreliable, masked.cross
    assert "transfer_natural fools" in masked.cross["black_box"]["reason"]
    assert honest.cross["black_box"]["verdict"] == "pass", honest.cross
