"""`bench perf-scheduler`: a benchmark (not a test) of the scheduler's own cost per job, and of how busy the
workers and GPUs are on a real matrix."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from ..cli_options import ConfigOpt, DataOpt



class _Quiet:
    def update(self, snap, force=False):
        pass

    def close(self):
        pass


def _time_noops(env, backend: str, devices: str, n: int, sleep: float) -> dict:
    """Run one warm-up no-op job per worker, then n no-op jobs that wait for all of them; time the n."""
    from ..sched import make_backend
    from ..sched.core import Scheduler
    from ..sched.plan import Job, Plan

    runner = make_backend(backend, devices)
    if backend == "ray":
        from ..sched.jobs import env_spec

        runner.start(env_spec(env))
    warm = [Job(f"warm:{i}", "noop", f"warm-up {i}", {"kind": "noop", "seconds": 0.0}) for i in range(runner.slots)]
    timed = [Job(f"noop:{i}", "noop", f"noop {i}", {"kind": "noop", "seconds": sleep}, [w.id for w in warm])
             for i in range(n)]
    marks = {}

    class Timed(Scheduler):
        def _handle(self, ev):
            super()._handle(ev)
            if all(w.state == "done" for w in warm) and "warm" not in marks:
                marks["warm"], marks["cpu"] = time.perf_counter(), time.process_time()

    t0 = time.perf_counter()
    Timed(env, Plan({j.id: j for j in warm + timed}, env.cache.root / "shards"), runner, _Quiet()).run()
    end, cpu_end = time.perf_counter(), time.process_time()
    return {"workers": runner.slots, "startup": marks["warm"] - t0, "seconds": end - marks["warm"],
            "cpu": cpu_end - marks["cpu"]}


def perf_scheduler(
    jobs: int = typer.Option(200, "--jobs", min=1, help="No-op jobs to time (after one warm-up job per worker)."),
    sleep: float = typer.Option(0.0, "--sleep", min=0, help="Seconds each no-op job sleeps (0 = pure overhead)."),
    backend: str = typer.Option("local", "--backend", help="local | ray"),
    devices: str = typer.Option("cpu", "--devices", help="Local workers, as for `bench run --devices`."),
    matrix: Optional[str] = typer.Option(None, "--matrix", help="Also run this [matrices.NAME] into a temporary folder and report how busy workers and GPUs were."),
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="--n-test for --matrix."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="--profile for --matrix."),
    config: Optional[Path] = ConfigOpt,
    data_root: Optional[Path] = DataOpt,
):
    """Scheduler overhead per job: the wall time of `--jobs` no-op jobs (after one warm-up job per worker, so
    worker start-up is measured apart) beyond their sleep, per job: dispatch, queues, result handling, progress."""
    from ..runner import Env
    from ..sched import run_matrix

    with tempfile.TemporaryDirectory() as tmp:
        env = Env.create(config=config, data_root=data_root, device="cpu", results_dir=tmp)
        t = _time_noops(env, backend, devices, jobs, sleep)
        ideal = sleep * jobs / t["workers"]
        typer.echo(f"backend {backend}, {t['workers']} worker(s): start-up {t['startup']:.2f}s; {jobs} no-op jobs "
                   f"(sleep {sleep}s) in {t['seconds']:.3f}s → {(t['seconds'] - ideal) / jobs * 1000:.2f} ms "
                   f"overhead per job ({jobs / t['seconds']:.0f} jobs/s); scheduler CPU "
                   f"{t['cpu'] / jobs * 1000:.2f} ms per job")
        if matrix:
            env.cfg.check_choice("matrix", matrix, env.cfg.matrices)
            m = env.cfg.matrices[matrix]
            t0 = time.perf_counter()
            summary = run_matrix(env, m.defenses, m.attacks, m.datasets, profile or m.profile, None, n_test,
                                 devices=devices, backend=backend, plain=True)
            wall = time.perf_counter() - t0
            workers = t["workers"]
            typer.echo(f"matrix {matrix}: {summary.jobs_run} jobs in {wall:.1f}s on {workers} worker(s); "
                       f"time inside jobs {summary.job_seconds:.1f}s = {summary.job_seconds / (wall * workers):.0%} "
                       f"of worker time" + (f"; mean GPU utilisation {summary.gpu_util:.0f}%"
                                            if summary.gpu_util is not None else "; no GPU"))


def register(app: typer.Typer) -> None:
    app.command("perf-scheduler")(perf_scheduler)
