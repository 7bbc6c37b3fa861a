"""`bench audit`: the expensive attack-failure and gradient-masking checks on one defense (bench/audit.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import (ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt, WeightsOpt,
                           make_env)


def audit(
    defense: Optional[str] = typer.Option(None, "--defense", "-d", help="Defense entry of bench.toml to audit."),
    model: Optional[str] = typer.Option(None, "--model", help="Audit a ready-made model instead of --defense, no "
                                        "training, as `bench run --model` evaluates it: FILE.py:FACTORY, "
                                        "MODULE:FACTORY or robustbench:NAME."),
    weights: Optional[str] = typer.Option(None, "--weights", help="With --model: the state_dict file (torch.load "
                                          "weights_only=True); for robustbench:NAME, RobustBench's model_dir."),
    threat_model: Optional[str] = typer.Option(None, "--threat-model", "-t", help="NORM:EPS, e.g. linf:8/255, l2:0.5 (default: the attack's own norm and eps)."),
    attack: Optional[str] = typer.Option(None, "--attack", "-a", help="White-box base attack (default: pgd_linf, pgd_l2 or pgd_l1 for the threat model's norm)."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="Test images (default: the profile's n_test)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only these variant roles besides the base attack, "
                                       "comma-separated: unbounded, budget, effort, loss, single_step, black_box, "
                                       "adapted (default: all). A partial report is written apart (…-only-ROLES.json) "
                                       "and never shown on the leaderboard."),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    weights_root: Optional[Path] = WeightsOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Attack one defense (or a ready-made model, --model) the way an expert checks an evaluation, all on the same test points: unbounded (eps =
    the whole box must fool every point), 0.5x and 2x eps, 5x steps and 5x restarts, the other loss (CE vs
    margin), FGSM, the black-box attacks of [verdicts.audit] (transfer from an undefended model, Square), EOT
    and the defense's BPDA surrogates. Prints each check's verdict, the original and the adapted number (the
    per-point worst case over all of them) and writes results/audit/<defense>-<dataset>-<profile>-<norm>-<eps>.json.
    Exit status 0 when no check failed, 1 when one did."""
    from ..audit import DEFAULT_ATTACK, audit as run_audit, parse_only, parse_threat_model, summary, write
    from .. import progress
    from ..errors import BenchError

    roles = parse_only(only)  # a bad role is an error before anything is loaded
    if (defense is None) == (model is None):
        raise BenchError("bench audit needs exactly one of --defense ENTRY (a bench.toml defense) and --model SPEC (a "
                         "ready-made model: FILE.py:FACTORY, MODULE:FACTORY or robustbench:NAME).")
    if weights is not None and model is None:
        raise BenchError("--weights goes with --model (the model whose state_dict it is); a bench.toml defense names "
                         "its weights in its entry.")
    if threat_model:
        parse_threat_model(threat_model)  # a bad threat model is an error before the model is loaded
    env = make_env(config, data_root, device, results_dir, weights_root=weights_root)
    s = env.cfg.settings
    ds, prof, sd = s.choose(dataset, profile, seed)
    if model is not None:
        from ..runner import check_ready_made
        from ..user_model import add_model_entry

        base = attack or DEFAULT_ATTACK[parse_threat_model(threat_model)[0] if threat_model else "linf"]
        defense = add_model_entry(env.cfg, model, weights, [base], ds, prof)  # an in-memory entry, as bench run's
        check_ready_made(env, defense, ds, prof, sd, keep=True)  # a wrong factory or file fails before any attack
    report = run_audit(env, defense, ds, prof, sd,
                       attack=attack, threat_model=threat_model, n_test=n_test, only=roles)
    summary(report)
    path = write(report, env.store.root)
    progress.log(f"audit report: {path}")
    if report["verdict"] == "fail":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
