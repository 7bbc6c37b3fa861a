"""`bench status`: the state of a matrix from the results store and the artifact cache (nothing is run)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..cli_options import ConfigOpt, CorruptionsOpt, DataOpt, ResultsOpt, SeedOpt, WeightsOpt

STYLE = {"ok": "green", "failed": "bold red", "blocked": "red", "queued": "yellow", "untrained": "dim",
         "training": "cyan"}


def status(
    matrix: Optional[str] = typer.Option(None, "--matrix", "-m", help="[matrices.NAME] to show (default: settings.matrix)."),
    defense: List[str] = typer.Option(None, "--defense", "-d", help="Show these defenses instead of the matrix's."),
    attack: List[str] = typer.Option(None, "--attack", "-a", help="Show these attacks instead of the matrix's."),
    suite: List[str] = typer.Option(None, "--suite", help="Show this [suites.NAME]'s worst-case cell (column suite:NAME); repeat for several."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset (default: the matrix's with --matrix or no --defense/--attack/--suite, else [settings]')."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile (default: as for --dataset)."),
    seed: Optional[int] = SeedOpt,
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="The --n-test the matrix was run with (default: the profile's)."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    weights_root: Optional[Path] = WeightsOpt,
    corruptions_root: Optional[Path] = CorruptionsOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Show every cell of a matrix (ok with robust accuracy, failed, blocked, queued, untrained) and the
    state of its checkpoints, read from results.csv and the artifact cache. It takes the same cell options as
    `bench run` and shows the cells that `bench run` with them runs."""
    from rich.console import Console
    from rich.table import Table

    from ..runner import Env
    from ..sched.plan import build_plan
    from ..sched.selection import select_cells
    from ..store import CellRows, safe_torch_load

    # the roots `bench run` was given: a cell's key depends on what its inputs are (an external checkpoint, the
    # released CIFAR-10-C files), so status must look where the run looked
    env = Env.create(config=config, data_root=data_root, results_dir=results_dir, device="cpu",
                     weights_root=weights_root, corruptions_root=corruptions_root)
    cfg = env.cfg
    sel = select_cells(cfg, matrix, defense, attack, suite, dataset, profile, seed)  # the cells `bench run` runs
    defenses, attacks, suites, datasets, profile, seed = (sel.defenses, sel.attacks, sel.suites, sel.datasets,
                                                          sel.profile, sel.seed)
    plan = build_plan(env, defenses, attacks, datasets, profile, seed, n_test, suites=suites)
    attacks = attacks + [f"suite:{n}" for n in suites]
    # a cell's state: its latest finished row, else its latest attempt (bench.store.CellRows, as every table)
    cell_rows = CellRows(env.store.rows(), lambda r: r["cell"])
    latest = cell_rows.shown
    out = Console()
    counts: dict[str, int] = {}
    for ds in datasets:
        table = Table(title=f"{sel.matrix if sel.whole_matrix else 'cells'} · {ds} · {profile} · seed {seed}",
                      title_justify="left")
        table.add_column("defense \\ attack")
        for a in attacks:
            table.add_column(a)
        for d in defenses:
            cells = []
            for a in attacks:
                job = next(j for j in plan.cells() if (j.row["defense"], j.row["attack"], j.row["dataset"]) == (d, a, ds))
                state, text = _cell_state(plan, job, latest.get(job.row["cell"]),
                                          cell_rows.newer_failure.get(job.row["cell"]))
                counts[state] = counts.get(state, 0) + 1
                cells.append(f"[{STYLE.get(state, '')}]{text}[/]")
            table.add_row(d, *cells)
        out.print(table)
    out.print("cells: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    planned = {j.row["cell"] for j in plan.cells()}
    names = {(j.row["defense"], j.row["attack"], j.row["dataset"]) for j in plan.cells()}
    other = [r for r in latest.values() if r["cell"] not in planned and r["profile"] == profile
             and str(r["seed"]) == str(seed) and (r["defense"], r["attack"], r["dataset"]) in names]
    if other:
        out.print(f"{len(other)} row(s) of these cells were made with another --n-test or bench.toml "
                  f"(n = {', '.join(sorted({r['n'] for r in other}))}): pass --n-test to show them.")
    trains = [j for j in plan if j.kind == "train"]
    out.print(f"checkpoints ({env.cache.root / 'checkpoints'}):")
    for j in trains:
        key = j.spec["key"]
        partial = env.cache.path("checkpoints", key, ".partial.pt")
        if env.cache.has("checkpoints", key):
            what = "cached"
        elif partial.exists():
            state = safe_torch_load(partial)
            epochs = cfg.defense(j.spec["defense"], j.spec["dataset"], profile).params.epochs
            what = f"interrupted after epoch {state['epoch']}/{epochs} (resumes there)"
        else:
            what = "not trained"
        out.print(f"  {j.spec['defense']:<20} {j.spec['dataset']:<14} {key}  {what}")


def _cell_state(plan, job, row, newer_failure=None) -> tuple[str, str]:
    if row is not None and row["status"] == "ok":
        after = f" (a newer attempt {newer_failure['status']})" if newer_failure else ""
        return "ok", f"{float(row['robust_acc']):.1%}{after}"
    if row is not None:
        reason = row["warnings"]
        return row["status"], f"{row['status']}: {reason[:60]}{'…' if len(reason) > 60 else ''}"
    trained = all(plan[d].state == "done" for d in job.deps if d.startswith("train:"))
    return ("queued", "queued") if trained else ("untrained", "untrained")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
