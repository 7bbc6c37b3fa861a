"""The scheduler loop, the same for every backend: dispatch ready jobs while a worker is free, turn results
into rows (the parent is the only writer of results.csv), retry a crashed or out-of-memory job once with a
smaller attack batch, mark the dependents of a failed node blocked, and keep everything else running."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field

from .. import progress, provenance
from ..errors import BenchError
from ..runner import Env, _f, _now, log_row, merge_parts
from ..store import LockBusy, atomic_write_json, content_hash
from .jobs import Event, env_spec
from .local import physical_gpu
from .plan import BLOCKED, DONE, FAILED, PENDING, RUNNING, Job, Plan
from .view import GpuMonitor

MAX_ATTEMPTS = 2  # the first try and one retry


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)  # rows written by this run (ok, failed and blocked)
    ok: int = 0
    failed: int = 0
    blocked: int = 0
    skipped: int = 0  # cells finished before this run
    jobs_run: int = 0
    seconds: float = 0.0
    job_seconds: float = 0.0  # time the workers spent inside jobs
    gpu_util: float | None = None  # mean utilisation over all GPUs while the run lasted (nvidia-smi)

    @property
    def problems(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]


class Scheduler:
    def __init__(self, env: Env, plan: Plan, backend, view, gpus: GpuMonitor | None = None):
        self.env, self.plan, self.backend, self.view = env, plan, backend, view
        self.gpus = gpus
        self.summary = Summary(skipped=sum(j.skipped for j in plan.cells()))
        self.durations: dict[str, list[float]] = {}
        self.t0 = time.time()
        self.claims: dict[str, contextlib.ExitStack] = {}  # cell key → its held store.cell_lock
        self.waiting: set[str] = set()  # cells another process computes (logged once)

    # ------------------------------------------------------------------ main loop
    def run(self) -> Summary:
        try:
            for job in [j for j in self.plan if j.state == FAILED]:  # failed at planning (a damaged checkpoint)
                self._fail(job, job.reason, "")
            if self.plan.unfinished() and not self.backend.started:  # no workers when all that is left is blocked
                self.backend.start(env_spec(self.env))
            while self.plan.unfinished():
                self._dispatch()
                if not self.plan.unfinished():
                    break
                if not any(j.state == RUNNING for j in self.plan) and not self.plan.ready():
                    stuck = ", ".join(j.label for j in self.plan if j.state == PENDING)
                    raise BenchError(f"scheduler stalled: nothing runs and nothing is ready, yet {stuck} wait; "
                                     f"this is a bug in bench.sched.")
                for event in self.backend.poll(0.2):
                    self._handle(event)
                self.view.update(self.snapshot())
        finally:
            for claim in self.claims.values():
                claim.close()
            self.claims.clear()
            self.backend.stop()
            self.summary.seconds = time.time() - self.t0
            self.view.update(self.snapshot(), force=True)
            self.view.close()
        return self.summary

    def _dispatch(self) -> None:
        for job in self.plan.ready():
            if job.kind != "merge" and self.backend.free_slots() == 0:
                continue
            if job.state != PENDING or (job.kind != "train" and not self._claim(job)):
                continue  # found finished by another run, or another run computes it now
            if job.kind == "merge":
                self._merge(job)
            else:
                job.state, job.started = RUNNING, time.time()
                self.backend.submit(job.id, job.spec, job.label)

    def _claim(self, job: Job) -> bool:
        """Take the cell's store.cell_lock (the one `bench run` of a single cell takes) before its first job runs and
        hold it until its row is written, so concurrent runs never both compute a cell. False while another process
        holds it (the job stays pending and is tried again next loop) or when, once the lock is ours, the table shows
        that another run finished the cell meanwhile: its jobs are then done, nothing is computed."""
        cell = job.spec["cell"]
        if cell in self.claims:
            return True
        claim = contextlib.ExitStack()
        try:
            claim.enter_context(self.env.store.cell_lock(cell, wait=False))
        except LockBusy:
            if cell not in self.waiting:
                self.waiting.add(cell)
                progress.log(f"[{job.label}] another run is computing cell {cell}; waiting for it")
            return False
        if len(self.env.store.ok_rows(cell)) > self.plan.finished[cell]:
            claim.close()
            progress.log(f"[{job.label}] finished by another run meanwhile (cell {cell}); skipping")
            for j in self.plan:
                if j.spec.get("cell") == cell and j.state == PENDING:
                    j.state, j.skipped = DONE, True
            self.summary.skipped += 1
            return False
        self.claims[cell] = claim
        return True

    def _release(self, job: Job) -> None:
        claim = self.claims.pop(job.spec.get("cell"), None)
        if claim is not None:
            claim.close()

    # ------------------------------------------------------------------ outcomes
    def _handle(self, ev: Event) -> None:
        job = self.plan[ev.job]
        self.summary.jobs_run += 1
        self.summary.job_seconds += ev.seconds
        if ev.ok:
            job.state, job.seconds = DONE, ev.seconds
            self.durations.setdefault(job.kind, []).append(ev.seconds)
            if job.kind == "cell":
                self._write_ok(job, [ev.result["part"]])
            elif job.kind == "suite":
                self._write_row(job, ev.result["row"], ev.result["manifest"])
            elif job.kind == "shard":
                atomic_write_json(self.plan.shard_path(job), ev.result["part"])
            elif job.kind == "train":
                progress.log(f"[scheduler] {job.label} done in {ev.seconds:.1f}s (checkpoint {job.spec['key']})")
            return
        job.attempts += 1
        if ev.retryable and job.attempts < MAX_ATTEMPTS:
            note = ev.error
            if job.kind in ("cell", "shard"):
                job.spec = {**job.spec, "batch_size": max(1, job.spec["nominal_batch"] // 2)}
                note += f"; retried with attack batch size {job.spec['batch_size']}"
            job.notes.append(note)
            job.state = PENDING
            progress.log(f"[scheduler] {job.label}: {ev.error}; retrying once")
            return
        self._fail(job, ev.error, ev.traceback)

    def _merge(self, job: Job) -> None:
        shards = [self.plan[d] for d in job.deps]
        try:
            parts = [json.loads(self.plan.shard_path(s).read_text()) for s in shards]
        except (OSError, ValueError) as e:  # a shard file removed or damaged by hand: redo the cell's shards
            for s in shards:
                self.plan.shard_path(s).unlink(missing_ok=True)
            self._fail(job, f"could not read its shard results ({e}); run again to recompute them", "")
            return
        for s in shards:
            job.notes += s.notes
        self._write_ok(job, parts)
        if job.state == DONE:
            shutil.rmtree(self.plan.shard_dir / job.spec["cell"], ignore_errors=True)

    def _write_ok(self, job: Job, parts: list[dict]) -> None:
        try:
            row, manifest = merge_parts(self.env, parts)
        except BenchError as e:  # e.g. the attack broke its budget: the cell failed, the matrix goes on
            self._fail(job, str(e), "")
            return
        self._write_row(job, row, manifest)

    def _write_row(self, job: Job, row: dict, manifest: dict) -> None:
        if job.notes:
            row["warnings"] = " | ".join(filter(None, [row["warnings"], *job.notes]))
        self.env.store.append(row, manifest)
        self._release(job)
        job.state = DONE
        self.summary.rows.append(row)
        self.summary.ok += 1
        log_row(row)

    def _fail(self, job: Job, reason: str, tb: str) -> None:
        job.state, job.reason = FAILED, reason
        progress.log(f"[scheduler] FAILED {job.label}: {reason}")
        if job.writes_row:
            self._write_problem(job, "failed", reason, tb)
        for dep in self.plan.dependents(job.id):
            if dep.state not in (PENDING, RUNNING):
                continue
            own_cell = job.kind == "shard" and dep.kind == "merge"  # a shard failing is its cell failing
            dep.state = FAILED if own_cell else BLOCKED
            dep.reason = (f"shard {job.spec['shard'][0] + 1}/{job.spec['shard'][1]} failed: {reason}" if own_cell
                          else f"{job.label} failed: {reason}")
            if dep.writes_row:
                self._write_problem(dep, dep.state, dep.reason, tb)

    def _write_problem(self, job: Job, status: str, reason: str, tb: str) -> None:
        r = job.row
        cfg = self.env.cfg
        row = {**r, "eps": _f(r["eps"]) if r["eps"] is not None else "", "status": status,
               "warnings": " | ".join([reason, *job.notes]), "git_sha": provenance.git_sha(),
               "versions": json.dumps(provenance.versions(), sort_keys=True),
               "config_hash": content_hash(cfg.path.read_text()), "timestamp": _now()}
        attacked = ({"suite_entry": cfg.suites[job.spec["suite"]].model_dump()} if job.kind == "suite" else
                    {"attack_entry": cfg.attack(r["attack"], r["dataset"], r["profile"]).as_dict()})
        manifest = {"defense_entry": cfg.defense(r["defense"], r["dataset"], r["profile"]).as_dict(),
                    **attacked, "error": reason, "traceback": tb}
        self.env.store.append(row, manifest)
        self._release(job)
        self.summary.rows.append(row)
        setattr(self.summary, status, getattr(self.summary, status) + 1)

    # ------------------------------------------------------------------ progress
    def snapshot(self) -> dict:
        cells = {"done": 0, "running": 0, "queued": 0, "failed": 0, "blocked": 0}
        for c in self.plan.cells():
            parts = [self.plan[d] for d in c.deps] if c.kind == "merge" else [c]
            if c.state == DONE:
                cells["done"] += 1
            elif c.state in (FAILED, BLOCKED):
                cells[c.state] += 1
            elif any(p.state == RUNNING for p in parts):
                cells["running"] += 1
            else:
                cells["queued"] += 1
        cells["total"] = sum(cells.values())
        workers = self.backend.running()
        for w in workers:
            if self.gpus and w["device"].startswith("cuda"):
                w["gpu"] = self.gpus.describe(physical_gpu(w["device"]))
        work = [j for j in self.plan if j.kind != "merge"]
        return {"cells": cells, "workers": workers, "elapsed": time.time() - self.t0, "eta": self.eta(),
                "jobs_done": sum(j.state == DONE and not j.skipped for j in work),
                "jobs_total": sum(not j.skipped for j in work)}

    def eta(self) -> float | None:
        """Seconds left: remaining jobs at the mean duration of finished jobs of their kind, over the workers."""
        every = [s for v in self.durations.values() for s in v]
        if not every:
            return None
        now, left = time.time(), 0.0
        for j in self.plan:
            if j.kind == "merge" or j.state not in (PENDING, RUNNING):
                continue
            seen = self.durations.get(j.kind) or every
            mean = sum(seen) / len(seen)
            left += max(0.0, mean - (now - j.started)) if j.state == RUNNING else mean
        return left / max(1, self.backend.slots)
