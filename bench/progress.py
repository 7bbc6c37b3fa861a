"""Progress bars (rich) that stay quiet in CI logs. BENCH_PROGRESS=0 turns them off, =1 forces them on."""
from __future__ import annotations

import contextlib
import os
import sys

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
        yield lambda n=1, **_: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n=1, **fields):
            info = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance


def log(message: str, markup: bool = False) -> None:
    console.print(message, highlight=False, markup=markup, soft_wrap=True)
