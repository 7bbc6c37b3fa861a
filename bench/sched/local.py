"""The embedded backend: one worker process per device (each visible GPU, or one CPU worker), fed one job
at a time by the parent, which alone writes results. A worker that dies is replaced and its job reported as
crashed; workers die with the parent (kill -9 included), so a re-run never races an orphan."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BenchError
from .jobs import Event, make_env, run_job

PARENT_ENV = "BENCH_SCHEDULER_PID"  # set in every worker: tells which scheduler process owns it


def parse_devices(spec: str | None) -> list[str]:
    """'auto' → every visible GPU (else one CPU worker); '0,1' or 'cuda:0,cuda:1' → those GPUs; 'cpu' → one
    CPU worker ('cpu,cpu' → two, each with half the cores)."""
    spec = (spec or "auto").strip()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return [f"cuda:{i}" for i in range(n_gpus)] or ["cpu"]
    devices = []
    for item in (s.strip() for s in spec.split(",")):
        index = "0" if item == "cuda" else item.removeprefix("cuda:")
        if item == "cpu":
            devices.append("cpu")
        elif index.isdigit() and int(index) < n_gpus:
            devices.append(f"cuda:{int(index)}")
        else:
            seen = f"GPUs 0..{n_gpus - 1} are visible" if n_gpus else "no GPU is visible"
            raise BenchError(f"--devices {spec}: '{item}' is not a usable device ({seen}). Allowed: auto, cpu, "
                             f"or GPU indices such as 0,1 (or cuda:0,cuda:1).")
    return devices


def physical_gpu(device: str) -> str:
    """The CUDA_VISIBLE_DEVICES entry behind cuda:N as this process sees it."""
    index = int(device.split(":")[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[index].strip() if visible else str(index)


# the queues' semaphores are registered with multiprocessing's resource tracker, a process of its own that outlives
# a parent killed with kill -9 and then unlinks them, warning "There appear to be N leaked semaphore objects"
# on the user's terminal. Its cleanup is what a killed run needs; the warning only alarms. The tracker takes this
# process's -W options when it starts (multiprocessing.util._args_from_interpreter_flags), so one filter here,
# before the first queue starts it, silences it there and nowhere else.
TRACKER_WARNINGS = "ignore::UserWarning:multiprocessing.resource_tracker"


def _quiet_resource_tracker() -> None:
    if TRACKER_WARNINGS not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_WARNINGS)


def _die_with_parent() -> None:
    try:  # Linux: the kernel sends SIGKILL to this worker when the parent dies, however it dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(index: int, generation: int, device: str, threads: int, spec: dict, inbox, outbox,
                log_path: str | None, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    if log_path:
        log = open(log_path, "a", buffering=1)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    os.environ["BENCH_PROGRESS"] = "0"  # bars from several processes would garble the parent's view
    if device.startswith("cuda"):  # isolate: libraries that pick "cuda" by default land on this GPU too
        os.environ["CUDA_VISIBLE_DEVICES"] = physical_gpu(device)
        device = "cuda:0"
    if threads:
        torch.set_num_threads(threads)
    env = None
    while True:
        try:
            item = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if item is None:
            return
        job_id, job_spec = item
        try:
            env = env or make_env(spec, device)
            result = run_job(env, job_spec)
        except Exception as e:  # the environment itself failed (bad config, unimportable plug-in)
            result = {"ok": False, "error": f"worker could not start: {type(e).__name__}: {e}", "seconds": 0.0}
        outbox.put({"worker": index, "generation": generation, "job": job_id, **result})


@dataclass
class Worker:
    index: int
    device: str
    process: mp.Process
    inbox: object
    generation: int = 0
    job: str | None = None
    label: str = ""
    since: float = 0.0


class LocalBackend:
    name = "local"

    def __init__(self, devices: list[str], log_dir: Path | None = None):
        self.devices = devices
        self.log_dir = log_dir
        n_cpu = devices.count("cpu")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.cpu_threads = max(1, cores // n_cpu) if n_cpu > 1 else 0  # one CPU worker keeps torch's default
        self.ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
        _quiet_resource_tracker()
        self.workers: list[Worker] = []
        self.started = False
        self.idle_deaths = [0] * len(devices)

    @property
    def slots(self) -> int:
        return len(self.devices)

    def start(self, spec: dict) -> None:
        self.started = True
        self.spec = spec
        self.outbox = self.ctx.Queue()
        os.environ[PARENT_ENV] = str(os.getpid())
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = [self._spawn(i, 0) for i in range(len(self.devices))]

    def _spawn(self, index: int, generation: int) -> Worker:
        device = self.devices[index]
        inbox = self.ctx.Queue()
        log = str(self.log_dir / f"worker-{index}.log") if self.log_dir else None
        threads = self.cpu_threads if device == "cpu" else 0
        process = self.ctx.Process(target=worker_main, name=f"bench-worker-{index}", daemon=True,
                                   args=(index, generation, device, threads, self.spec, inbox, self.outbox, log,
                                         os.getpid()))
        process.start()
        return Worker(index, device, process, inbox, generation)

    def free_slots(self) -> int:
        return sum(w.job is None for w in self.workers)

    def submit(self, job_id: str, spec: dict, label: str = "") -> None:
        worker = next(w for w in self.workers if w.job is None)
        worker.job, worker.label, worker.since = job_id, label, time.time()
        worker.inbox.put((job_id, spec))

    def poll(self, timeout: float) -> list[Event]:
        messages = []
        try:
            messages.append(self.outbox.get(timeout=timeout))
            while True:
                messages.append(self.outbox.get_nowait())
        except queue.Empty:
            pass
        events = []
        for m in messages:
            w = self.workers[m["worker"]]
            if m["generation"] != w.generation or w.job != m["job"]:
                continue  # from a worker already replaced: its job was rescheduled
            w.job = None
            events.append(Event(m["job"], m["ok"], m.get("result") or {}, m.get("error", ""), m.get("traceback", ""),
                                m.get("retryable", False), m.get("seconds", 0.0)))
        for i, w in enumerate(self.workers):
            if w.process.is_alive():
                continue
            code = w.process.exitcode
            if w.job is None:
                self.idle_deaths[i] += 1
                if self.idle_deaths[i] > 3:
                    raise BenchError(f"worker {i} ({w.device}) keeps dying before it gets a job (exit code "
                                     f"{code}); run one cell with `bench run` to see the error.")
            else:
                reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                events.append(Event(w.job, False, error=f"worker {i} ({w.device}) crashed ({reason})",
                                    retryable=True, seconds=time.time() - w.since))
            self.workers[i] = self._spawn(i, w.generation + 1)
        return events

    def running(self) -> list[dict]:
        return [{"worker": f"{w.index}", "device": w.device, "job": w.job, "label": w.label, "since": w.since}
                for w in self.workers]

    def stop(self) -> None:
        for w in self.workers:
            if w.process.is_alive():
                w.inbox.put(None)
        deadline = time.time() + 10
        for w in self.workers:
            w.process.join(timeout=max(0.1, deadline - time.time()))
            if w.process.is_alive():  # still inside a job (Ctrl-C): finished work is saved, the rest redone
                w.process.kill()
                w.process.join()
        self.workers = []
        os.environ.pop(PARENT_ENV, None)

