"""`bench run`: train (or reuse) defenses, attack them, one row per cell (bench.runner, bench.sched)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import progress
from ..cli_options import (ConfigOpt, CorruptionsOpt, DataOpt, DatasetOpt, DeviceOpt, ProfileOpt, ResultsOpt,
                           RetrainOpt, SeedOpt, WeightsOpt, check_n_test)
from ..cli_options import make_env as _env
from ..errors import BenchError

ORDER = 0  # first in `bench --help`: the command a newcomer needs


def run(
    defense: List[str] = typer.Option(None, "--defense", "-d", help="Defense entry of bench.toml; repeat for several (default: the matrix's)."),
    attack: List[str] = typer.Option(None, "--attack", "-a", help="Attack entry of bench.toml; repeat for several (default: the matrix's)."),
    suite: List[str] = typer.Option(None, "--suite", help="A [suites.NAME] of bench.toml: its attacks in turn on one threat model, each on the points the previous ones left robust (one row per stage in suite_stages.csv, the worst case as attack suite:NAME); repeat for several."),
    model: Optional[str] = typer.Option(None, "--model", help="Evaluate a ready-made model, no training (instead of --defense): FILE.py:FACTORY, MODULE:FACTORY or robustbench:NAME. The factory takes no arguments and returns an nn.Module taking images in [0, 1] (normalization inside the model) and returning logits."),
    weights: Optional[str] = typer.Option(None, "--weights", help="With --model: the state_dict file, loaded with torch.load(weights_only=True); for robustbench:NAME, RobustBench's model_dir (default ./models)."),
    profile: Optional[str] = ProfileOpt,
    dataset: Optional[str] = DatasetOpt,
    n_test: Optional[int] = typer.Option(None, "--n-test", callback=check_n_test, help="Test images to evaluate: 1 to the test set's size, 10000 (default: the profile's n_test)."),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Recompute cells that already have a finished row."),
    retrain: bool = RetrainOpt,
    matrix: Optional[str] = typer.Option(None, "--matrix", "-m", help="Run a [matrices.NAME] of bench.toml on the scheduler (bare --matrix: settings.matrix); --defense/--attack/--dataset/--profile narrow or override it."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Scheduler workers: auto (one per visible GPU, else one CPU worker) | cpu | GPU indices such as 0,1."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Scheduler backend: local (default: worker processes here) | ray (each job a Ray task; pip install 'bench[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: start a local Ray instance); implies --backend ray."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Split each attack cell over this many jobs merged exactly (default 1; auto = one per worker for cells of >= 2000 test points)."),
    plain: bool = typer.Option(False, "--plain", help="Plain log lines instead of the live progress view (CI)."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
    weights_root: Optional[Path] = WeightsOpt,
    corruptions_root: Optional[Path] = CorruptionsOpt,
    results_dir: Optional[Path] = ResultsOpt,
):
    """Train (or reuse) each defense, attack it, append one row per cell to results.csv, refresh the leaderboard.

    Several cells, --matrix or any scheduler option run the cells as a cached DAG on worker processes (one per
    GPU) or on Ray: a failed training blocks only its own cells, and the rest go on. Finished cells are skipped
    on re-run, so an interrupted run (Ctrl-C or kill -9) resumes where it stopped. Under a profile with
    `audit = true` each defense is then audited (bench audit) once per threat model of the attacks, and the
    leaderboard shows the adapted numbers."""
    from ..report.render import render
    from ..runner import check_ready_made
    from ..runner import run as run_cells
    from ..sched.selection import check_backwards, select_cells  # bench.sched loads torch: not at `bench --help`

    if model is not None or weights is not None:
        env, defense = _model_env(model, weights, defense, attack, matrix, devices, backend, ray_address, shards,
                                  config, data_root, device, results_dir, dataset, profile, seed, suites=suite,
                                  weights_root=weights_root, corruptions_root=corruptions_root)
    else:
        env = _env(config, data_root, device, results_dir,
                   check=lambda cfg: check_backwards(cfg, select_cells(cfg, matrix, defense, attack, suite,
                                                                       dataset, profile, seed)),
                   weights_root=weights_root, corruptions_root=corruptions_root)
    env.retrain = retrain
    cfg = env.cfg
    sel = select_cells(cfg, matrix, defense, attack, suite, dataset, profile, seed)  # the cells `bench status` shows
    defenses, attacks, suites, datasets, profile, seed = (sel.defenses, sel.attacks, sel.suites, sel.datasets,
                                                          sel.profile, sel.seed)
    scheduled = (matrix is not None or devices or backend or ray_address or shards or plain
                 or len(defenses) * (len(attacks) + len(suites)) > 1) and model is None  # --model's lives here
    for ds in datasets if model is None else []:  # (--model's was checked in _model_env)
        for name in defenses:  # a ready-made model's wrong file fails here, before a job writes a failed row
            check_ready_made(env, name, ds, profile, seed)
    if not scheduled:
        rows = run_cells(defenses, attacks, dataset=datasets[0], profile=profile, seed=seed, n_test=n_test,
                         force=force, env=env) if attacks else []
        for name in suites:
            from ..suite import run_suite

            rows.append(run_suite(env, defenses[0], name, datasets[0], profile, seed,
                                  n_test, force))
        done = {(rows[0]["dataset"], rows[0]["profile"])}
    else:
        from ..sched import run_matrix

        summary = run_matrix(env, defenses, attacks, datasets, profile, seed, n_test, force,
                             devices=devices or device or "auto", backend=backend or ("ray" if ray_address else "local"),
                             ray_address=ray_address, shards=shards or 1, plain=plain, suites=suites)
        done = {(d, profile) for d in datasets}
    if cfg.profiles[profile].audit:  # the profile's audit switch: after the cells, before the tables that show it
        from ..audit import audit_matrix

        failed = {(r["dataset"], r["defense"]) for r in summary.problems} if scheduled else set()
        audit_matrix(env, defenses, attacks, sorted({d for d, _ in done}), profile,
                     seed, n_test, force, skip=failed)
    for ds, prof in sorted(done):
        path = render(env.store.rows(), ds, prof, env.store.root)
        if path:
            progress.log(f"leaderboard: {path}")
    if scheduled and summary.problems:
        lines = "; ".join(f"{r['defense']} × {r['attack']} ({r['dataset']}) {r['status']}: {r['warnings']}"
                          for r in summary.problems)
        raise BenchError(f"{summary.failed} cell(s) failed and {summary.blocked} blocked ({summary.ok} finished "
                         f"in this run); their rows in results.csv say why, and re-running retries them (a cell "
                         f"finished earlier keeps its finished row on every table; --force retries it). {lines}")


def _model_env(model, weights, defense, attack, matrix, devices, backend, ray_address, shards, config, data_root,
               device, results_dir, dataset, profile, seed, suites=None, weights_root=None, corruptions_root=None):
    """The Env of `bench run --model`, with the model as an in-memory defense entry, loaded and checked before the
    results folder is touched: a wrong factory, weights file or output shape leaves nothing behind."""
    from ..runner import Env, check_ready_made
    from ..store import ensure_cache_dir, ensure_writable_dir
    from ..user_model import add_model_entry

    if model is None:
        raise BenchError("--weights goes with --model (the model whose state_dict it is); a bench.toml defense "
                         "names its weights in its entry.")
    if defense:
        raise BenchError("Give --model or --defense, not both: --model evaluates one ready-made model.")
    others = [o for o, v in (("--matrix", matrix), ("--devices", devices), ("--backend", backend),
                             ("--ray-address", ray_address), ("--shards", shards)) if v is not None]
    if others:
        raise BenchError(f"--model runs its cells in this process and takes no {', '.join(others)}: for the "
                         f"scheduler, add the model to bench.toml as an entry with plugin = \"pretrained\".")
    if not attack and not suites:
        raise BenchError("--model needs --attack (an attack entry of bench.toml; repeat for several) or --suite.")
    env = Env.create(config=config, data_root=data_root, device=device, results_dir=results_dir,
                     weights_root=weights_root, corruptions_root=corruptions_root)
    progress.log(f"config {env.cfg.path} · results {env.store.root} · data {env.data_root}")
    s = env.cfg.settings
    ds, prof, seed = s.choose(dataset, profile, seed)
    for n in suites or []:
        env.cfg.check_choice("suite", n, env.cfg.suites)
    attacks = list(attack or []) or [a for n in suites for a in env.cfg.suites[n].attacks]
    name = add_model_entry(env.cfg, model, weights, attacks, ds, prof)
    check_ready_made(env, name, ds, prof, seed, keep=True)  # --model's cells run in this process
    ensure_writable_dir(env.store.root, "results folder")
    ensure_cache_dir(env.cache.root)
    return env, [name]


def register(app: typer.Typer) -> None:
    app.command("run")(run)
