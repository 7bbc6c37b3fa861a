"""`--backend ray`: the same jobs as Ray tasks (`num_gpus=1` each where the cluster has GPUs, else one CPU),
on a running cluster (`--ray-address`) or a local Ray instance. The parent stays the only writer of results;
checkpoints and other artifacts go to the cache folder, which every node must see (a shared filesystem),
like the data root. Ray is an optional extra: pip install 'bench[ray]'."""
from __future__ import annotations

import os
import time

import torch

from ..errors import BenchError
from .jobs import Event

_ENVS: dict = {}  # per Ray worker process: one Env per (spec, device), reused by every task it runs


def _run_task(spec: dict, job_spec: dict) -> dict:
    import ray

    from .jobs import make_env, run_job

    os.environ["BENCH_PROGRESS"] = "0"
    device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray narrows CUDA_VISIBLE_DEVICES to the task's GPU
    # as many threads as CPUs the task holds, like a local CPU worker's share of the cores
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    key = (repr(spec), device)
    if key not in _ENVS:
        _ENVS[key] = make_env(spec, device)
    return run_job(_ENVS[key], job_spec)


class RayBackend:
    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self.inflight: dict = {}  # ObjectRef -> (job id, label, submitted)
        self.owns = False
        self.started = False

    def start(self, spec: dict) -> None:
        try:
            import ray
        except ImportError:
            raise BenchError("--backend ray needs Ray, an optional extra: pip install 'bench[ray]' "
                             "(or pip install ray). The default --backend local needs nothing more.") from None
        self.ray = ray
        self.started = True
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self.owns = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self._slots = gpus or max(1, int(resources.get("CPU", 1)))
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        # retries are the scheduler's: once, with a smaller attack batch
        self.task = ray.remote(_run_task).options(max_retries=0, **options)
        self.spec = ray.put(spec)

    @property
    def slots(self) -> int:
        return self._slots if self.started else 1

    def free_slots(self) -> int:
        return self._slots - len(self.inflight)  # submit no more than can run: queued jobs stay ours to order

    def submit(self, job_id: str, spec: dict, label: str = "") -> None:
        self.inflight[self.task.remote(self.spec, spec)] = (job_id, label, time.time())

    def poll(self, timeout: float) -> list[Event]:
        if not self.inflight:
            time.sleep(timeout)
            return []
        refs = list(self.inflight)
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        events = []
        for ref in ready:
            job_id, _, since = self.inflight.pop(ref)
            try:
                m = self.ray.get(ref)
            except Exception as e:  # the task's worker died: a crash, out of memory, a lost node
                events.append(Event(job_id, False, error=f"Ray task failed: {type(e).__name__}: {e}"[:2000],
                                    retryable=True, seconds=time.time() - since))
                continue
            events.append(Event(job_id, m["ok"], m.get("result") or {}, m.get("error", ""), m.get("traceback", ""),
                                m.get("retryable", False), m.get("seconds", 0.0)))
        return events

    def running(self) -> list[dict]:
        return [{"worker": f"task {i}", "device": "ray", "job": job, "label": label, "since": since}
                for i, (job, label, since) in enumerate(self.inflight.values())]

    def stop(self) -> None:
        for ref in list(self.inflight):
            self.ray.cancel(ref, force=True)
        self.inflight.clear()
        if self.owns:
            self.ray.shutdown()
