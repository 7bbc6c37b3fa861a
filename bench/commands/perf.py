"""`bench perf`: the attack engine against its limit (a bare forward+backward) and against torchattacks and
foolbox, plus the model passes that per-point early exit saves (see bench.perf.engine)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def perf_batch(env, defense: str, dataset: str, profile: str, seed: int, n: int, random_init: bool):
    """The model (trained/cached defense, or a freshly initialised one of the same architecture) and the first
    `n` test images it classifies correctly (all `n` for a random model, whose accuracy is chance)."""
    import torch

    from bench.data import load_subset
    from bench.runner import _build_defense, predict, train

    if random_init:
        torch.manual_seed(seed)
        model = _build_defense(env, defense, dataset, profile)[1].build_model().to(env.device).eval()
    else:
        model = train(defense, dataset, profile, seed, env=env).model
    x, y = load_subset(dataset, "test", env.data_root, max(4 * n, 200), seed)
    if not random_init:
        correct = predict(model, x, env.device, 250) == y
        x, y = x[correct], y[correct]
    return model, x[:n].to(env.device), y[:n].to(env.device)


def register(app) -> None:
    import typer

    from ..cli_options import ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt
    from ..cli_options import make_env as _env

    @app.command()
    def perf(
        defense: str = typer.Option("natural", "--defense", "-d", help="Defense entry whose model is attacked."),
        random_init: bool = typer.Option(False, "--random-init", help="Use a freshly initialised model of the defense's architecture (no training)."),
        n: int = typer.Option(64, "--n", min=1, help="Batch size (correctly classified test images)."),
        eps: str = typer.Option("8/255", "--eps", help="Linf budget, e.g. 8/255."),
        steps: int = typer.Option(10, "--steps", min=1, help="PGD steps for the timings (a) and (b)."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Interleaved timing repeats (medians are reported)."),
        c_steps: int = typer.Option(40, "--c-steps", min=1, help="(c): PGD steps."),
        c_restarts: int = typer.Option(10, "--c-restarts", min=1, help="(c): restarts."),
        skip_c: bool = typer.Option(False, "--skip-c", help="Skip (c), which attacks without early exit (the slow part)."),
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
        """Time our PGD against a bare forward+backward, torchattacks and foolbox, and count early-exit savings.

        All on the same model and batch in one run: (a) our step time / forward+backward (target <= 1.05 on
        CPU), (b) torchattacks / ours (>= 1.0) and foolbox / ours (>= 1.4), (c) passes per image of
        PGD-40 x 10 restarts with vs without early exit (~ 40·(1 + 9·robust fraction) with it)."""
        from bench.params import parse_number
        from bench.perf.engine import format_result, measure
        from bench.store import atomic_write_json

        import torch

        if threads:
            torch.set_num_threads(threads)
        env = _env(config, data_root, device, results_dir)
        s = env.cfg.settings
        dataset, profile, seed = s.choose(dataset, profile, seed)
        model, x, y = perf_batch(env, defense, dataset, profile, seed, n, random_init)
        res = measure(model, x, y, eps=parse_number(eps), steps=steps, repeats=repeats, c_steps=c_steps,
                      c_restarts=c_restarts, skip_c=skip_c)
        out = res.as_dict() | {"defense": defense, "random_init": random_init, "dataset": dataset, "profile": profile}
        typer.echo(format_result(res))
        if json_out:
            atomic_write_json(json_out, out)


    @app.command("perf-checks")
    def perf_checks(
        defense: list[str] = typer.Option(["natural"], "--defense", "-d", help="Defense entry; repeat for several."),
        attack: list[str] = typer.Option(["pgd_linf"], "--attack", "-a", help="Attack entry; repeat for several."),
        n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="Test images (default: the cell's, i.e. the profile's n_test)."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Interleaved repeats of checks on / off (medians are reported)."),
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
        """What the per-cell verdict checks cost: each cell's attack with the checks on and off, in one run.

        Prints, per defense x attack, the attack's time without and with the checks, the overhead (target
        <= 10 %) and the model probes' share, and checks both runs fooled the same points."""
        from bench.perf.checks import check_share, format_share
        from bench.store import atomic_write_json

        import torch

        if threads:
            torch.set_num_threads(threads)
        env = _env(config, data_root, device, results_dir)
        s = env.cfg.settings
        dataset, profile, seed = s.choose(dataset, profile, seed)
        for d in defense:
            env.cfg.defense(d, dataset, profile)
        for a in attack:
            env.cfg.attack(a, dataset, profile)
        out = []
        for d in defense:
            for a in attack:
                out.append(check_share(env, d, a, dataset, profile, seed, n_test, repeats))
                typer.echo(format_share(out[-1]))
        if json_out:
            atomic_write_json(json_out, {"cells": out})
