"""keep_freed_memory: a freed 64 MiB tensor stays in the process's heap (glibc's own accounting, mallinfo2:
deterministic), so a re-allocation reuses its pages instead of faulting in fresh ones (counted in minor page faults,
which the kernel's reclaim under load can blur: that count runs as a slow test only). Each case runs in its own
interpreter so the setting starts from glibc's defaults."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.cpu_memory import keep_freed_memory

_PROBE = """
import resource, torch
from bench.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 << 20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_PAGES_PER_TENSOR = (64 << 20) // 4096


def _probe(opt_out: bool) -> tuple[bool, int]:
    env = dict(os.environ, BENCH_KEEP_FREED_MEMORY="0" if opt_out else "1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


_HEAP = """
import ctypes, torch
from bench.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
print(applied, libc.mallinfo2().fordblks)
"""


def _heap_probe(opt_out: bool) -> tuple[bool, int]:
    env = dict(os.environ, BENCH_KEEP_FREED_MEMORY="0" if opt_out else "1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _HEAP], env=env, capture_output=True, text=True)
    if out.returncode != 0 and "mallinfo2" in out.stderr:
        pytest.skip("glibc older than 2.33: no mallinfo2")
    assert out.returncode == 0, out.stderr
    applied, free_bytes = out.stdout.split()
    return applied == "True", int(free_bytes)


def test_a_freed_block_stays_in_the_heap_for_the_next_allocation():
    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt is unavailable and nothing is tuned")
    applied, free_bytes = _heap_probe(opt_out=False)
    assert applied and free_bytes >= 64 << 20, f"only {free_bytes} free bytes kept in the heap"
    applied, free_bytes = _heap_probe(opt_out=True)  # glibc's defaults: mmap'd and handed back to the kernel
    assert not applied and free_bytes < 64 << 20, f"{free_bytes} free bytes kept without the setting"


@pytest.mark.slow
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt is unavailable and nothing is tuned")
    # the fewest faults of 3 processes: the kernel may reclaim a kept block under memory pressure from other work
    # (seen 2 runs in 5 on a busy CI-like machine); glibc's defaults fault all five in every time (the next test)
    probes = [_probe(opt_out=False) for _ in range(3)]
    applied, faults = all(a for a, _ in probes), min(f for _, f in probes)
    assert applied
    # kept memory faults at most one block's pages
    assert faults < 2 * _PAGES_PER_TENSOR, f"{faults} page faults for 5 re-allocations of {_PAGES_PER_TENSOR} pages"


def test_opting_out_keeps_glibc_defaults_that_fault_every_block_in():
    if not keep_freed_memory():
        pytest.skip("not glibc")
    applied, faults = _probe(opt_out=True)
    assert not applied
    assert faults > 4 * _PAGES_PER_TENSOR, f"only {faults} page faults: glibc's defaults no longer mmap 64 MiB"
