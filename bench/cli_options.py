"""Command-line options every `bench` command shares, declared once (bench.cli and the modules under
bench/commands import them from here)."""
from __future__ import annotations

import typer

ConfigOpt = typer.Option(None, "--config", help="bench.toml to use (default: BENCH_CONFIG, ./bench.toml, the repo's).")
DataOpt = typer.Option(None, "--data-root", help="Folder holding the datasets (overrides BENCH_DATA and bench.toml).")
ResultsOpt = typer.Option(None, "--results-dir", help="Folder of results.csv, run manifests and the cache (default from bench.toml).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="smoke | quick | paper (any [profiles.*] in bench.toml; default from [settings]).")
DatasetOpt = typer.Option(None, "--dataset", help="cifar10 | mnist | fashion_mnist (default from [settings]).")
SeedOpt = typer.Option(None, "--seed", help="Seed for training, the test subset and attack randomness (default from [settings]).")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default from [settings]).")
OutOpt = typer.Option(None, "--out", help="Folder for the output (default: the results folder).")


def make_env(config, data_root, device, results_dir):
    from .runner import Env

    return Env.create(config=config, data_root=data_root, device=device, results_dir=results_dir)
