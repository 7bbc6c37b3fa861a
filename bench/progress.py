"""Progress bars (rich) that stay quiet in CI logs. BENCH_PROGRESS=0 turns them off, =1 forces them on.

Without a bar, long work still reports: one plain line (done/total, rate, ETA) at most every BENCH_HEARTBEAT
seconds (default 60; 0 = never), so a log of a background run shows it is alive and when it will end."""
from __future__ import annotations

import contextlib
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def enabled() -> bool:
    flag = os.environ.get("BENCH_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def bar(description: str, total: int):
    """Yields `advance(n=1, **fields)`; shows a bar with ETA when the terminal is interactive."""
    if not enabled():
        yield _heartbeat(description, total)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n=1, **fields):
            info = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance


def _heartbeat(description: str, total: int):
    every = float(os.environ.get("BENCH_HEARTBEAT", "60") or 0)
    start = last = time.monotonic()
    done = 0

    def advance(n=1, **fields):
        nonlocal done, last
        done += n
        now = time.monotonic()
        if every <= 0 or now - last < every or done >= total:
            return
        last = now
        rate = done / (now - start)
        info = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        log(f"{description}: {done}/{total} {info} {rate:.3g}/s, eta {(total - done) / rate:.0f} s")

    return advance


def log(message: str, markup: bool = False) -> None:
    console.print(message, highlight=False, markup=markup, soft_wrap=True)
