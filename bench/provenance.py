"""Where a number came from: code version, library versions, device."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

LIBRARIES = ("torch", "torchvision", "numpy", "foolbox", "torchattacks", "pyautoattack", "scikit-learn")


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    return _git_sha(Path(__file__).resolve().parent.parent)


def _git_sha(root: Path) -> str:
    # a copy shipped elsewhere (e.g. to a GPU machine) names its commit: its own .git, if any, may be stale
    # (seen on the GPU machine, where it named the previous commit)
    if os.environ.get("BENCH_GIT_SHA"):
        return os.environ["BENCH_GIT_SHA"]
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip()[:12] + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in ("bench", *LIBRARIES):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}"


def resolve_device(spec: str) -> torch.device:
    from .errors import BenchError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise BenchError(f"Unknown device '{spec}'. Allowed: auto, cpu, cuda, cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"Device '{spec}' was requested but no CUDA GPU is visible. Use --device cpu or auto.")
    return device


def portable_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` as a manifest records it: relative to `root` (the folder of bench.toml) when it lies inside it or one
    level beside it (`../shared/data`), else only its last two parts after '…/', so that committed evidence never
    names the folders of the machine that made it (the data's own checks say which files were read)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if not rel.startswith(os.pardir + os.sep + os.pardir):
        return rel
    return "…/" + "/".join(Path(os.path.abspath(path)).parts[-2:])
