"""`bench` command line: a thin layer over the library API in bench.runner / bench.report."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import progress
from .errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Adversarial-robustness benchmark: registered defenses x registered attacks, "
                       "settings in bench.toml, results with full provenance in results/.")

ConfigOpt = typer.Option(None, "--config", help="bench.toml to use (default: BENCH_CONFIG, ./bench.toml, the repo's).")
DataOpt = typer.Option(None, "--data-root", help="Folder holding the datasets (overrides BENCH_DATA and bench.toml).")
ResultsOpt = typer.Option(None, "--results-dir", help="Where results.csv, manifests and the cache go (default from bench.toml).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="smoke | quick | paper (any [profiles.*] in bench.toml; default from [settings]).")
DatasetOpt = typer.Option(None, "--dataset", help="cifar10 | mnist | fashion_mnist (default from [settings]).")
SeedOpt = typer.Option(None, "--seed", help="Seed for training, the test subset and attack randomness (default from [settings]).")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default from [settings]).")


def _env(config, data_root, device, results_dir):
    from .runner import Env

    return Env.create(config=config, data_root=data_root, device=device, results_dir=results_dir)


@app.command()
def run(
    defense: List[str] = typer.Option(None, "--defense", "-d", help="Defense entry of bench.toml; repeat for several (default: the matrix's)."),
    attack: List[str] = typer.Option(None, "--attack", "-a", help="Attack entry of bench.toml; repeat for several (default: the matrix's)."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="Test images to evaluate (default: the profile's n_test)."),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Recompute cells that already have a finished row."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Train (or reuse) each defense, attack it, append one row per cell to results.csv, refresh the leaderboard.

    Finished cells are skipped on re-run, so an interrupted run resumes where it stopped."""
    from .report import render
    from .runner import run as run_cells

    env = _env(config, data_root, device, results_dir)
    s = env.cfg.settings
    matrix = env.cfg.matrices.get(s.matrix)
    if not defense or not attack:
        if matrix is None:
            raise BenchError("Give --defense and --attack (no default [matrices] entry to take them from).")
    defenses = list(defense or []) or matrix.defenses
    attacks = list(attack or []) or matrix.attacks
    rows = run_cells(defenses, attacks, dataset=dataset, profile=profile, seed=seed, n_test=n_test, force=force, env=env)
    path = render(env.store.rows(), rows[0]["dataset"], rows[0]["profile"], env.store.root)
    if path:
        progress.log(f"leaderboard: {path}")


@app.command()
def train(
    defense: List[str] = typer.Option(..., "--defense", "-d", help="Defense entry of bench.toml; repeat for several."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Train defenses into the content-addressed checkpoint cache (reused by later runs; resumes per epoch)."""
    from .runner import train as train_one

    env = _env(config, data_root, device, results_dir)
    for name in defense:
        env.cfg.defense(name, dataset or env.cfg.settings.dataset, profile or env.cfg.settings.profile)
    for name in defense:
        t = train_one(name, dataset=dataset, profile=profile, seed=seed, env=env)
        last = t.meta.get("history", [{}])[-1] if t.meta.get("history") else {}
        progress.log(f"[{name}] checkpoint {t.key}: test_acc (monitor) {last.get('test_acc', float('nan')):.4f}, "
                     f"flags {t.meta.get('flags', {})}")


@app.command()
def table(
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    config: Optional[Path] = ConfigOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Render the leaderboard (Markdown + CSV) for a dataset/profile from results.csv and print it."""
    from .config import load_config
    from .report import render
    from .store import ResultsStore

    cfg = load_config(config)
    root = Path(results_dir) if results_dir else cfg.resolve_path(cfg.settings.results_dir)
    dataset = dataset or cfg.settings.dataset
    profile = profile or cfg.settings.profile
    cfg.check_choice("dataset", dataset, cfg.datasets)
    cfg.check_choice("profile", profile, cfg.profiles)
    path = render(ResultsStore(root).rows(), dataset, profile, root)
    if path is None:
        raise BenchError(f"No finished cells for dataset {dataset}, profile {profile} in {root / 'results.csv'}. "
                         f"Run `bench run --profile {profile} --dataset {dataset}` first.")
    typer.echo(path.read_text())


@app.command("list")
def list_(config: Optional[Path] = ConfigOpt):
    """Show every registered defense and attack (one line each, with parameters) and the bench.toml entries."""
    from .config import load_config
    from .registry import plugins

    cfg = load_config(config)
    for kind, title in (("defense", "Defenses"), ("attack", "Attacks")):
        typer.echo(f"{title} (registered plug-ins):")
        for name, cls in plugins(kind).items():
            typer.echo(f"  {name:14s} {cls.describe()}")
            params = ", ".join(f"{k}={_show(f.default)}" for k, f in cls.Params.model_fields.items())
            typer.echo(f"  {'':14s} params: {params}")
        entries = ", ".join(f"{n}" + (f" ({cfg.entries[kind][n]['plugin']})" if "plugin" in cfg.entries[kind][n] else "")
                            for n in cfg.names(kind))
        typer.echo(f"  entries in {cfg.path.name}: {entries}\n")
    typer.echo(f"Profiles: {', '.join(f'{k} ({v.description})' for k, v in cfg.profiles.items())}")
    typer.echo(f"Datasets: {', '.join(cfg.datasets)}; matrices: {', '.join(cfg.matrices) or '(none)'}")


def _show(v):
    from pydantic_core import PydanticUndefined

    return "[]" if v is PydanticUndefined else repr(v)


def _register_command_modules() -> None:
    """Each module in bench/commands/ adds its sub-commands with `register(app)` (no edits here)."""
    import importlib
    import pkgutil

    from . import commands

    for info in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(app)


_register_command_modules()


def main():
    try:
        app(standalone_mode=False)
    except BenchError as e:
        progress.console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        progress.console.print("\ninterrupted: finished rows and checkpoints are saved; run the same command "
                               "again to resume.", highlight=False)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
