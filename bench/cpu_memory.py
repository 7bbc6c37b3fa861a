"""Keep freed memory in the process instead of handing it back to the kernel after every tensor.

glibc's malloc serves large blocks with fresh mmap()s and trims the heap top after frees, so on a CPU every
batch's activations are page-faulted in (zeroed by the kernel) again: measured on this project's 2-core machine,
a ResNet-32 forward in batches of 2048 spent more time in the kernel than in the convolutions (sys 25 s vs user
16 s; 170 images/s), and ZOO on the natural model ran at 242 model passes/s. Raising both thresholds to 1 GiB
lets malloc reuse the blocks (sys 0.3 s, ~650 images/s). PyTorch's CPU tuning guide fixes the same thing by
preloading jemalloc or tcmalloc; mallopt needs no extra library and can be set after the process started.
The cost is that the process keeps its peak heap until it exits. BENCH_KEEP_FREED_MEMORY=0 opts out."""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 1 << 30
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Idempotent; True when glibc accepted both settings (False on other C libraries or when opted out)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("BENCH_KEEP_FREED_MEMORY", "1").lower() in ("0", "false", "no"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(option, ctypes.c_int(_THRESHOLD)) == 1
                   for option in (_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        return False
