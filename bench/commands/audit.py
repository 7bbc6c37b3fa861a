"""`bench audit`: the expensive attack-failure and gradient-masking checks on one defense (bench/audit.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import (ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt, WeightsOpt,
                           make_env)


def audit(
    defense: str = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml to audit."),
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
    """Attack one defense the way an expert checks an evaluation, all on the same test points: unbounded (eps =
    the whole box must fool every point), 0.5x and 2x eps, 5x steps and 5x restarts, the other loss (CE vs
    margin), FGSM, the black-box attacks of [verdicts.audit] (transfer from an undefended model, Square), EOT
    and the defense's BPDA surrogates. Prints each check's verdict, the original and the adapted number (the
    per-point worst case over all of them) and writes results/audit/<defense>-<dataset>-<profile>-<norm>-<eps>.json.
    Exit status 0 when no check failed, 1 when one did."""
    from ..audit import audit as run_audit, parse_only, summary, write
    from .. import progress

    roles = parse_only(only)  # a bad role is an error before anything is loaded
    env = make_env(config, data_root, device, results_dir, weights_root=weights_root)
    s = env.cfg.settings
    report = run_audit(env, defense, *s.choose(dataset, profile, seed),
                       attack=attack, threat_model=threat_model, n_test=n_test, only=roles)
    summary(report)
    path = write(report, env.store.root)
    progress.log(f"audit report: {path}")
    if report["verdict"] == "fail":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
