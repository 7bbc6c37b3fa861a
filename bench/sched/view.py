"""Progress of a matrix run: a live rich view (cells done / running / queued / failed, workers, GPU
utilisation, ETA) on a terminal, or plain log lines for CI (`--plain`, or whenever progress bars are off)."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import progress

HEARTBEAT_S = 60.0  # plain mode: a status line at least this often, so a long job does not look hung


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class GpuMonitor:
    """Utilisation and memory of each GPU from nvidia-smi, sampled in the background every few seconds."""

    def __init__(self, interval: float = 2.0):
        self.stats: dict[str, dict] = {}
        self.samples: list[float] = []  # mean utilisation over all GPUs, one per sample (for the benchmark)
        self._stop = threading.Event()
        self._thread = None
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
            self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
                stats = {}
                for line in out.stdout.strip().splitlines():
                    index, util, used, total = (v.strip() for v in line.split(","))
                    stats[index] = {"util": float(util), "mem_used": float(used), "mem_total": float(total)}
                self.stats = stats
                if stats:
                    self.samples.append(sum(s["util"] for s in stats.values()) / len(stats))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(interval)

    def describe(self, physical: str | None) -> str:
        s = self.stats.get(physical) if physical is not None else None
        return f"{s['util']:.0f}% util, {s['mem_used'] / 1024:.1f}/{s['mem_total'] / 1024:.0f} GiB" if s else ""

    def close(self) -> None:
        self._stop.set()


class PlainView:
    def __init__(self):
        self.last = 0.0

    def update(self, snap: dict, force: bool = False) -> None:
        if force or time.time() - self.last >= HEARTBEAT_S:
            self.last = time.time()
            progress.log(summary_line(snap))

    def close(self) -> None:
        pass


def summary_line(snap: dict) -> str:
    c = snap["cells"]
    return (f"cells {c['done']}/{c['total']} done · {c['running']} running · {c['queued']} queued · "
            f"{c['failed']} failed · {c['blocked']} blocked | jobs {snap['jobs_done']}/{snap['jobs_total']} | "
            f"elapsed {clock(snap['elapsed'])} · eta {clock(snap['eta'])}")


class LiveView:
    def __init__(self):
        self.live = Live(console=progress.console, refresh_per_second=2, transient=False)
        self.live.start()

    def update(self, snap: dict, force: bool = False) -> None:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("worker", "device", "job", "for", "gpu"):
            table.add_column(col)
        now = time.time()
        for w in snap["workers"]:
            busy = w["job"] is not None
            table.add_row(w["worker"], w["device"], w["label"] if busy else Text("idle", style="dim"),
                          clock(now - w["since"]) if busy else "", w.get("gpu", ""))
        self.live.update(Group(Text(summary_line(snap), style="bold"), table) if snap["workers"]
                         else Text(summary_line(snap), style="bold"))

    def close(self) -> None:
        self.live.stop()


def make_view(plain: bool):
    return PlainView() if plain or not progress.enabled() else LiveView()
