"""`bench train`: defenses into the checkpoint cache, no attack."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import progress
from ..cli_options import (ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, RetrainOpt, SeedOpt,
                           WeightsOpt)
from ..cli_options import make_env as _env

ORDER = 1


def train(
    defense: List[str] = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml; repeat for several."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    weights_root: Optional[Path] = WeightsOpt,
    results_dir: Optional[Path] = ResultsOpt,
    retrain: bool = RetrainOpt,
):
    """Train defenses into the content-addressed checkpoint cache (reused by later runs; resumes per epoch)."""
    from ..runner import train as train_one

    env = _env(config, data_root, device, results_dir, check=lambda cfg: [
        cfg.defense(name, dataset or cfg.settings.dataset, profile or cfg.settings.profile) for name in defense],
        weights_root=weights_root)
    env.retrain = retrain
    for name in defense:
        t = train_one(name, dataset=dataset, profile=profile, seed=seed, env=env)
        last = t.meta.get("history", [{}])[-1] if t.meta.get("history") else {}
        progress.log(f"[{name}] checkpoint {t.key}: test_acc (monitor) {last.get('test_acc', float('nan')):.4f}, "
                     f"flags {t.meta.get('flags', {})}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
