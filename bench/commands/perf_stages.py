"""`bench perf-stages`: a defense model's forward and forward+backward cost broken down by stage (e.g. how much
of an attack step the sparse-coding front end takes), see bench.perf.stages."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt
from ..cli_options import make_env


def perf_stages(
    defense: str = typer.Option("sparse", "--defense", "-d", help="Defense entry whose model is broken down (its model must define stages(x))."),
    surrogate: Optional[str] = typer.Option(None, "--surrogate", help="Backward surrogate in force while timing (default: the defense's first, e.g. smooth:4+top_u:2T; 'autograd' = none)."),
    random_init: bool = typer.Option(False, "--random-init", help="Freshly initialised model (no training; costs do not depend on the weights)."),
    n: int = typer.Option(64, "--n", min=1, help="Batch size (test images)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Interleaved timing repeats (medians are reported)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch's default)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Time each stage of a defense's model (forward alone, and forward + input gradient as an attack step
    computes it through the chosen backward surrogate) and print each stage's share and the front end's cost
    relative to the classifier's. A benchmark, not a test: run it on an otherwise idle machine."""
    import torch

    from ..perf.stages import format_stages, measure_stages
    from ..runner import _build_defense
    from ..store import atomic_write_json
    from .perf import perf_batch

    if threads:
        torch.set_num_threads(threads)
    env = make_env(config, data_root, device, results_dir)
    s = env.cfg.settings
    dataset, profile, seed = s.choose(dataset, profile, seed)
    _, d = _build_defense(env, defense, dataset, profile)
    model, x, y = perf_batch(env, defense, dataset, profile, seed, n, random_init)
    spec = surrogate if surrogate is not None else (d.surrogates[0] if d.surrogates else "autograd")
    with d.surrogate(model, spec) as m:
        res = measure_stages(m, x, y, repeats, spec)
    typer.echo(format_stages(res))
    if json_out:
        atomic_write_json(json_out, res.as_dict() | {"defense": defense, "random_init": random_init,
                                                     "dataset": dataset, "profile": profile})


def register(app: typer.Typer) -> None:
    app.command("perf-stages")(perf_stages)
