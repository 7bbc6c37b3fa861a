"""`bench perf-scheduler`: a benchmark (not a test) of the scheduler's own cost per job, and of how busy the
workers and GPUs are on a real matrix."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

ConfigOpt = typer.Option(None, "--config", help="bench.toml to use (default: BENCH_CONFIG, ./bench.toml, the repo's).")


class _Quiet:
    def update(self, snap, force=False):
        pass

    def close(self):
        pass


def _noop_seconds(env, backend: str, devices: str, n: int, sleep: float) -> float:
    """Wall time of n no-op jobs through the scheduler, worker start-up included."""
    from ..sched import make_backend
    from ..sched.core import Scheduler
    from ..sched.plan import Job, Plan

    plan = Plan({f"noop:{i}": Job(f"noop:{i}", "noop", f"noop {i}", {"kind": "noop", "seconds": sleep})
                 for i in range(n)}, env.cache.root / "shards")
    t0 = time.perf_counter()
    Scheduler(env, plan, make_backend(backend, devices), _Quiet()).run()
    return time.perf_counter() - t0


def perf_scheduler(
    jobs: int = typer.Option(200, "--jobs", min=1, help="No-op jobs to time (after one warm-up job per worker)."),
    sleep: float = typer.Option(0.0, "--sleep", min=0, help="Seconds each no-op job sleeps (0 = pure overhead)."),
    backend: str = typer.Option("local", "--backend", help="local | ray"),
    devices: str = typer.Option("cpu", "--devices", help="Local workers, as for `bench run --devices`."),
    matrix: Optional[str] = typer.Option(None, "--matrix", help="Also run this [matrices.NAME] into a temporary folder and report how busy workers and GPUs were."),
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="--n-test for --matrix."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="--profile for --matrix."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data root for --matrix."),
):
    """Scheduler overhead per job: the extra wall time of `--jobs` more no-op jobs over one per worker, divided
    by their number (dispatch, queues, result handling, progress), with worker start-up measured apart."""
    from ..runner import Env
    from ..sched import make_backend, run_matrix

    with tempfile.TemporaryDirectory() as tmp:
        env = Env.create(config=config, data_root=data_root, device="cpu", results_dir=tmp)
        slots = make_backend(backend, devices).slots if backend == "local" else None
        base_n = slots or 1
        start = _noop_seconds(env, backend, devices, base_n, sleep)
        total = _noop_seconds(env, backend, devices, base_n + jobs, sleep)
        per_job = (total - start) / jobs
        typer.echo(f"backend {backend}, {base_n if slots else '?'} worker(s): start-up + {base_n} job(s) "
                   f"{start:.2f}s; {jobs} more no-op jobs (sleep {sleep}s) {total - start:.2f}s → "
                   f"{per_job * 1000:.1f} ms per job ({per_job - sleep / base_n:.4f}s over the ideal), "
                   f"{jobs / (total - start):.0f} jobs/s")
        if matrix:
            env.cfg.check_choice("matrix", matrix, env.cfg.matrices)
            m = env.cfg.matrices[matrix]
            t0 = time.perf_counter()
            summary = run_matrix(env, m.defenses, m.attacks, m.datasets, profile or m.profile, None, n_test,
                                 devices=devices, backend=backend, plain=True)
            wall = time.perf_counter() - t0
            workers = slots or 1
            typer.echo(f"matrix {matrix}: {summary.jobs_run} jobs in {wall:.1f}s on {workers} worker(s); "
                       f"time inside jobs {summary.job_seconds:.1f}s = {summary.job_seconds / (wall * workers):.0%} "
                       f"of worker time" + (f"; mean GPU utilisation {summary.gpu_util:.0f}%"
                                            if summary.gpu_util is not None else "; no GPU"))


def register(app: typer.Typer) -> None:
    app.command("perf-scheduler")(perf_scheduler)
