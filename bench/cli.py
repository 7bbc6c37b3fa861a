"""`bench` command line: a thin layer over the library API in bench.runner / bench.report."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from . import progress
from .cpu_memory import keep_freed_memory
from .cli_options import ConfigOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt, SeedOpt
from .cli_options import make_env as _env
from .errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Adversarial-robustness benchmark: registered defenses x registered attacks, "
                       "settings in bench.toml, results with full provenance in results/.")


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
    matrix: Optional[str] = typer.Option(None, "--matrix", "-m", help="Run a [matrices.NAME] of bench.toml on the scheduler (bare --matrix: settings.matrix); --defense/--attack/--dataset/--profile narrow or override it."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Scheduler workers: auto (one per visible GPU, else one CPU worker) | cpu | GPU indices such as 0,1."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Scheduler backend: local (default: worker processes here) | ray (each job a Ray task; pip install 'bench[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: start a local Ray instance); implies --backend ray."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Split each attack cell over this many jobs merged exactly (default 1; auto = one per worker for cells of >= 2000 test points)."),
    plain: bool = typer.Option(False, "--plain", help="Plain log lines instead of the live progress view (CI)."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Train (or reuse) each defense, attack it, append one row per cell to results.csv, refresh the leaderboard.

    Several cells, --matrix or any scheduler option run the cells as a cached DAG on worker processes (one per
    GPU) or on Ray: a failed training blocks only its own cells, and the rest go on. Finished cells are skipped
    on re-run, so an interrupted run (Ctrl-C or kill -9) resumes where it stopped."""
    from .report import render
    from .runner import run as run_cells

    env = _env(config, data_root, device, results_dir)
    cfg, s = env.cfg, env.cfg.settings
    if matrix is not None:
        cfg.check_choice("matrix", matrix or s.matrix, cfg.matrices)
    chosen = cfg.matrices.get(matrix or s.matrix)
    if (not defense or not attack) and chosen is None:
        raise BenchError("Give --defense and --attack (no default [matrices] entry to take them from).")
    defenses = list(defense or []) or chosen.defenses
    attacks = list(attack or []) or chosen.attacks
    datasets = [dataset] if dataset else (chosen.datasets if matrix is not None else [s.dataset])
    profile = profile or (chosen.profile if matrix is not None else None) or s.profile
    scheduled = (matrix is not None or devices or backend or ray_address or shards or plain
                 or len(defenses) * len(attacks) > 1)
    if not scheduled:
        rows = run_cells(defenses, attacks, dataset=datasets[0], profile=profile, seed=seed, n_test=n_test,
                         force=force, env=env)
        done = {(rows[0]["dataset"], rows[0]["profile"])}
    else:
        from .sched import run_matrix

        summary = run_matrix(env, defenses, attacks, datasets, profile, seed, n_test, force,
                             devices=devices or device or "auto", backend=backend or ("ray" if ray_address else "local"),
                             ray_address=ray_address, shards=shards or 1, plain=plain)
        done = {(d, profile) for d in datasets}
    for ds, prof in sorted(done):
        path = render(env.store.rows(), ds, prof, env.store.root)
        if path:
            progress.log(f"leaderboard: {path}")
    if scheduled and summary.problems:
        lines = "; ".join(f"{r['defense']} × {r['attack']} ({r['dataset']}) {r['status']}: {r['warnings']}"
                          for r in summary.problems)
        raise BenchError(f"{summary.failed} cell(s) failed and {summary.blocked} blocked ({summary.ok} finished "
                         f"in this run); their rows in results.csv say why, and re-running retries them. {lines}")


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
        entries = ", ".join(f"{n}" + (f" ({cfg.entry(kind, n)['plugin']})" if "plugin" in cfg.entry(kind, n) else "")
                            for n in cfg.names(kind))
        typer.echo(f"  names for --{kind} ({cfg.path.name} entries, and plug-ins without one): {entries}\n")
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


def _bare_matrix(argv: list[str]) -> list[str]:
    # `--matrix` without a name means settings.matrix; click options cannot take an optional value
    return [a if a != "--matrix" or (i + 1 < len(argv) and not argv[i + 1].startswith("-")) else "--matrix="
            for i, a in enumerate(argv)]


def main():
    keep_freed_memory()
    try:
        app(args=_bare_matrix(sys.argv[1:]), standalone_mode=False)
    except BenchError as e:
        # messages name bench.toml tables like [tables.NAME]: print them literally, not as rich markup
        progress.console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
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
