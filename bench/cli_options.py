"""Command-line options every `bench` command shares, declared once (bench.cli and the modules under
bench/commands import them from here), and the checks of their values."""
from __future__ import annotations

import typer

SEED_MAX = 2**32 - 1


def check_seed(value):
    """--seed: a whole number from 0 (the same range as settings.seed in bench.toml)."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"{value} is not allowed: a seed is a whole number from 0 to {SEED_MAX}.")
    return value


def check_n_test(value):
    """--n-test: at least one test image and at most the test set (subset_indices would quietly take all)."""
    from .data import TEST_SET_SIZE

    top = max(TEST_SET_SIZE.values())
    if value is not None and not 1 <= value <= top:
        sizes = ", ".join(f"{k} {v}" for k, v in TEST_SET_SIZE.items())
        raise typer.BadParameter(f"{value} is not allowed: give a whole number of test images from 1 to {top} "
                                 f"(the test set sizes: {sizes}).")
    return value


ConfigOpt = typer.Option(None, "--config", help="bench.toml to use (default: BENCH_CONFIG, else ./bench.toml in the current folder).")
DataOpt = typer.Option(None, "--data-root", help="Folder holding the datasets (overrides BENCH_DATA and bench.toml).")
WeightsOpt = typer.Option(None, "--weights-root", help="Folder holding the external zoo entries' checkpoints, e.g. the papers' authors' (overrides BENCH_WEIGHTS and settings.weights_root; bench zoo list shows them).")
CorruptionsOpt = typer.Option(None, "--corruptions-root", help="Folder holding CIFAR-10-C's inputs: frost/ (the generator's frost images) and, if you have them, the released CIFAR-10-C/*.npy, read instead of regenerating (overrides BENCH_CORRUPTIONS and settings.corruptions_root).")
ResultsOpt = typer.Option(None, "--results-dir", help="Folder of results.csv, run manifests and the cache (default from bench.toml).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="smoke | quick | paper (any [profiles.*] in bench.toml; default from [settings]).")
DatasetOpt = typer.Option(None, "--dataset", help="cifar10 | mnist | fashion_mnist (default from [settings]).")
SeedOpt = typer.Option(None, "--seed", callback=check_seed, help=f"Seed for training, the test subset and attack randomness: 0 to {SEED_MAX} (default from [settings]).")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default from [settings]).")
RetrainOpt = typer.Option(False, "--retrain", help="Train a checkpoint whose model zoo entry is missing or damaged (into the local cache; the zoo is left as it is) instead of stopping with the remedy (restore the committed file).")
OutOpt = typer.Option(None, "--out", help="Folder for the output (default: the results folder).")


def make_env(config, data_root, device, results_dir, check=None, weights_root=None, corruptions_root=None):
    """The Env of a command that writes results: names the config file in use (the first log line), runs
    `check(cfg)` (the command's names and choices), and only then creates the results and cache folders and checks
    that they can be written, so a bad name leaves no folder behind."""
    from . import progress
    from .runner import Env
    from .store import ensure_cache_dir, ensure_writable_dir

    env = Env.create(config=config, data_root=data_root, device=device, results_dir=results_dir,
                     weights_root=weights_root, corruptions_root=corruptions_root)
    progress.log(f"config {env.cfg.path} · results {env.store.root} · data {env.data_root}")
    if check is not None:
        check(env.cfg)
    ensure_writable_dir(env.store.root, "results folder")
    ensure_cache_dir(env.cache.root)
    return env
