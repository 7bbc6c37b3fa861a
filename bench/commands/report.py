"""`bench table`, `bench plot`, `bench regress`: reports read from the results store only."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import BenchError

from ..cli_options import ConfigOpt, OutOpt, ResultsOpt, check_seed

# reports only read: these say "show", not "run"
ProfileOpt = typer.Option(None, "--profile", "-p", help="Profile whose cells to show (default from [settings]).")
DatasetOpt = typer.Option(None, "--dataset", help="Dataset whose cells to show (default from [settings]).")
SeedOpt = typer.Option(None, "--seed", help="Seed whose cells to show (default: the seed of the most recent row).")


def _context(config, results_dir, dataset=None, profile=None):
    from ..config import load_config
    from ..report.tables import Results

    cfg = load_config(config)
    root = Path(results_dir) if results_dir else cfg.resolve_path(cfg.settings.results_dir)
    dataset = dataset or cfg.settings.dataset
    profile = profile or cfg.settings.profile
    cfg.check_choice("dataset", dataset, cfg.datasets)
    cfg.check_choice("profile", profile, cfg.profiles)
    return cfg, root, dataset, profile, Results.load(root)


def table(
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    seed: Optional[int] = SeedOpt,
    spec: List[str] = typer.Option(None, "--spec", help="Render this [tables.NAME] paper layout (repeat for several)."),
    paper: bool = typer.Option(False, "--paper", help="Render every [tables.*] paper layout of --profile (and of --dataset, when given)."),
    latex: bool = typer.Option(False, "--latex", help="Also write a LaTeX (.tex) version."),
    attacks: bool = typer.Option(False, "--attacks", help="Render the attack leaderboard instead: per norm, each minimum-norm attack's optimality per defense (area under the best curve over all attacks / area under its own; 1 = it found every point's smallest norm) and its model passes per point, to tables/attacks_DATASET_PROFILE.md."),
    html: bool = typer.Option(False, "--html", help="Also write leaderboard.html: one self-contained page (no server, no network) with a tab per dataset / profile / threat model of the results, sortable columns, verdict reasons on hover and worst-case-vs-eps plots."),
    out: Optional[Path] = OutOpt,
    config: Optional[Path] = ConfigOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Render the leaderboard (Markdown + CSV) for a dataset/profile from results.csv and print it.

    Rows are defenses, columns attacks (accuracy ± 95 % CI, mean norm for minimum-norm attacks), a per-sample
    worst-case column and cost columns. With --spec/--paper, renders the papers' table layouts from bench.toml
    into tables/NAME.md|csv with the published numbers beside the measured ones."""
    from ..report.render import render, render_specs

    given_dataset = dataset
    cfg, root, dataset, profile, results = _context(config, results_dir, dataset, profile)
    out = Path(out) if out else root
    names = list(spec or [])
    if paper:
        names = [n for n, t in cfg.tables.items() if given_dataset in (None, t.dataset) and t.renders_for(profile)]
        if not names and not cfg.tables:
            raise BenchError(f"--paper: {cfg.path} defines no [tables.*] paper layouts (see bench.report.table_spec).")
        if not names:
            have = sorted({f"{t.dataset} ({', '.join(t.profiles) if t.profiles else 'any profile'})"
                           for t in cfg.tables.values()})
            raise BenchError(f"No [tables.*] paper layout for dataset {given_dataset or 'any'}, profile {profile} in "
                             f"{cfg.path}; layouts exist for: {'; '.join(have)}.")
    if attacks:
        from ..report.curves import write_attack_board

        path = write_attack_board(results, dataset, profile, seed, out)
        if path is None:
            raise BenchError(f"No minimum-norm attack with per-sample norms for dataset {dataset}, profile {profile}"
                             f"{'' if seed is None else f', seed {seed}'} in {root}. Run one first, e.g. "
                             f"`bench run -a fmn_linf --profile {profile} --dataset {dataset}`.")
        typer.echo(path.read_text())
        return
    if names:
        for path in render_specs(results, cfg, names, profile, out, seed, latex):
            typer.echo(path.read_text())
        return
    path = render(results.rows, dataset, profile, out, seed, results.runs_dir, latex)
    if path is None:
        raise BenchError(f"No cells for dataset {dataset}, profile {profile}"
                         f"{'' if seed is None else f', seed {seed}'} in {root / 'results.csv'}. "
                         f"Run `bench run --profile {profile} --dataset {dataset}` first.")
    if html:
        from ..report import html_board

        page = html_board.write(results, out / "leaderboard.html")
        typer.echo(f"wrote {page}" if page else "no bounded attack in the results: no HTML page written", err=True)
    typer.echo(path.read_text())


def plot(
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    seed: Optional[int] = SeedOpt,
    attack: List[str] = typer.Option(None, "--attack", "-a", help="Attack entry to plot (repeat; default: every attack with results)."),
    kind: List[str] = typer.Option(None, "--kind", help="eps | steps | restarts | norms | curve (repeat; default: all that have data). curve: per norm, accuracy against every eps from all attacks' per-sample evidence, with a CSV beside the PNG."),
    out: Optional[Path] = OutOpt,
    config: Optional[Path] = ConfigOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Plot accuracy vs eps / steps / restarts per defense and the norm distributions of minimum-norm attacks.

    A curve joins the cells whose attack differs only in the plotted parameter (define entries such as
    pgd_linf_eps4 in bench.toml and run them). PNGs go to plots/ and are linked from plots.md."""
    from ..report.plots import KINDS, render_plots

    for k in kind or []:
        if k not in KINDS:
            raise BenchError(f"Unknown plot kind '{k}'. Allowed: {', '.join(KINDS)}.")
    cfg, root, dataset, profile, results = _context(config, results_dir, dataset, profile)
    for a in attack or []:
        cfg.check_name("attack", a)
    page, made, skipped = render_plots(results, Path(out) if out else root, dataset, profile, seed,
                                       list(attack or []) or None, list(kind or []) or None)
    if page is None:
        raise BenchError(f"No cells for dataset {dataset}, profile {profile} in {root / 'results.csv'}.")
    for p in made:
        typer.echo(f"{p.title}: {page.parent / p.file}")
    for s in skipped:
        typer.echo(f"not plotted: {s}")
    typer.echo(f"page: {page}")


def regress(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline CSV, results/baselines/<matrix>-<profile>-<device>.csv (its sidecar .json says which matrix, profile, seed and device kind)."),
    matrix: Optional[str] = typer.Option(None, "--matrix", "-m", help="The [matrices.NAME] that ran: its cells are compared, a missing one is a regression, baseline cells outside it are listed as not in this run (default: the baseline's matrix)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile of the run (default: the baseline's; with --write-baseline: the matrix's, else [settings])."),
    seed: Optional[int] = typer.Option(None, "--seed", callback=check_seed, help="With --write-baseline: the seed of the cells to take (default: [settings]); a comparison uses the baseline's."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0, max=1, help="Significance level of the two-proportion / Welch tests (default: [regress] of bench.toml)."),
    min_change: Optional[float] = typer.Option(None, "--min-change", min=0, max=1, help="Smallest absolute accuracy change (fraction; 0.02 = 2 points) to flag (default: [regress.matrices.M] for the baseline's matrix M, else [regress])."),
    norm_rtol: Optional[float] = typer.Option(None, "--norm-rtol", min=0, help="Smallest relative change of a mean perturbation norm to flag (default: [regress])."),
    report: Optional[Path] = typer.Option(None, "--report", help="Markdown report path (default: <results>/regress.md)."),
    write_baseline: bool = typer.Option(False, "--write-baseline", "--update", help="Write (or accept) the baseline from the latest rows of every cell of --matrix: the CSV and its sidecar (exit 0)."),
    allow_device_change: bool = typer.Option(False, "--allow-device-change", help="Compare even though this run's device kind (cpu / cuda) differs from the baseline's (otherwise exit 2)."),
    config: Optional[Path] = ConfigOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Compare a matrix run with its baseline. Exit code 0 = no regression, 1 = regression, 2 = error.

    A cell of the matrix regresses when its clean or robust accuracy moves beyond sampling noise (two-proportion
    z-test) and by at least the baseline's tolerance, when it has no row, or when it stops finishing. A baseline
    that is torn, lacks a column or holds a non-number is an error naming its file and line."""
    from ..report.regress import run_regress, write_from_results

    cfg, root, _, _, results = _context(config, results_dir)
    if profile is not None:
        cfg.check_choice("profile", profile, cfg.profiles)
    if matrix is not None:
        cfg.check_choice("matrix", matrix, cfg.matrices)
    out = report or root / "regress.md"
    if write_baseline:
        code, text = write_from_results(results, baseline, out, cfg, matrix, profile, seed)
    else:
        code, text = run_regress(results, baseline, out, cfg, matrix, profile, allow_device_change,
                                 alpha=alpha, min_change=min_change, norm_rtol=norm_rtol)
    typer.echo(text)
    if code:
        sys.exit(code)  # SystemExit passes through typer in non-standalone mode, unlike typer.Exit


def register(app: typer.Typer) -> None:
    app.command()(table)
    app.command()(plot)
    app.command()(regress)
