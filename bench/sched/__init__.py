"""Run a defense × attack (× dataset) matrix as a cached DAG of jobs on all local GPUs (one CPU worker
without GPUs) or on a Ray cluster.

    from bench.sched import run_matrix
    summary = run_matrix(env, ["natural", "pgd_at"], ["pgd_linf", "fgsm"], devices="auto")

Nodes are trained checkpoints and attack cells (optionally split into shards), content-addressed by their
resolved config: finished ones are never recomputed, a failed one blocks only its dependents, and the same
command resumes after any interruption, kill -9 included."""
from __future__ import annotations

from ..data import check_files, load_split
from ..errors import BenchError
from ..runner import Env
from .core import Scheduler, Summary
from .jobs import env_spec
from .plan import PENDING, Plan, build_plan, parse_shards
from .view import GpuMonitor, make_view

BACKENDS = ("local", "ray")


def make_backend(kind: str, devices: str | None = None, ray_address: str | None = None, log_dir=None):
    if kind == "local":
        from .local import LocalBackend, parse_devices

        return LocalBackend(parse_devices(devices), log_dir)
    if kind == "ray":
        from .ray_backend import RayBackend

        return RayBackend(ray_address)
    raise BenchError(f"Unknown backend '{kind}'. Allowed: {', '.join(BACKENDS)}.")


def run_matrix(env: Env, defenses: list[str], attacks: list[str], datasets: list[str] | None = None,
               profile: str | None = None, seed: int | None = None, n_test: int | None = None, force: bool = False,
               devices: str | None = "auto", backend: str = "local", ray_address: str | None = None,
               shards: int | str = 1, plain: bool = False, suites: list[str] | None = None) -> Summary:
    """Run every cell of defenses × attacks × datasets, and each suite of `suites` on every defense × dataset
    (one job per suite, after its trainings: bench.suite); returns what this run wrote (see `Summary`)."""
    from .. import progress

    s = env.cfg.settings
    datasets = datasets or [s.dataset]
    _, profile, seed = s.choose(None, profile, seed)
    shards = parse_shards(shards)
    view_plain = plain or not progress.enabled()
    runner = make_backend(backend, devices, ray_address, None if view_plain else env.store.root / "logs")
    for name in defenses:  # every bad name fails before any work starts
        for dataset in datasets:
            env.cfg.defense(name, dataset, profile)
    for dataset in datasets:  # data problems are one clear error before any job starts, not N failed or blocked cells
        env.cfg.check_choice("dataset", dataset, env.cfg.datasets)
        check_files(dataset, env.data_root)  # every file of both splits, as `bench run` of one cell checks
        load_split(dataset, "test", str(env.data_root))  # no copy at all: downloaded, or where bench looked
    if backend == "ray" and shards == "auto":
        runner.start(env_spec(env))  # the cluster's size decides the shard count
    plan = build_plan(env, defenses, attacks, datasets, profile, seed, n_test, shards, runner.slots, force,
                      suites=suites or [])
    todo = [j for j in plan if j.state == PENDING and j.kind != "merge"]
    cells = plan.cells()
    progress.log(f"[scheduler] {len(cells)} cells ({sum(c.skipped for c in cells)} finished earlier), "
                 f"{sum(j.kind == 'train' for j in todo)} trainings and {sum(j.kind != 'train' for j in todo)} "
                 f"attack jobs to run on {runner.name} with {runner.slots} worker(s)"
                 + ("" if view_plain or backend != "local" else f"; worker logs in {env.store.root / 'logs'}"))
    if not plan.unfinished():
        if getattr(runner, "started", False):
            runner.stop()
        return Summary(skipped=len(cells))
    gpus = GpuMonitor()
    try:
        summary = Scheduler(env, plan, runner, make_view(view_plain), gpus).run()
    finally:
        gpus.close()
    summary.gpu_util = sum(gpus.samples) / len(gpus.samples) if gpus.samples else None
    return summary


__all__ = ["run_matrix", "build_plan", "Plan", "Summary", "Scheduler", "make_backend", "BACKENDS"]
