"""Datasets as uint8 tensors, read from a local data root (official layouts) or downloaded where a network exists.

Root resolution: --data-root flag → BENCH_DATA env → settings.data_root in bench.toml → ./data."""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import DataError

# numpy and torch are imported where the arrays are read: the command line's option checks (TEST_SET_SIZE) and
# dataset names (INFO) come from here without loading torch

CIFAR10_BIN_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
TEST_SET_SIZE = {"cifar10": 10000, "mnist": 10000, "fashion_mnist": 10000}  # --n-test may not exceed these
CIFAR10_PY_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


INFO = {
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, CIFAR10_MEAN, CIFAR10_STD),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFO:
        raise DataError(f"Unknown dataset '{name}'. Allowed: {', '.join(INFO)}.")
    return INFO[name]


def resolve_data_root(flag: str | os.PathLike | None = None, config_value: str | os.PathLike | None = None) -> Path:
    for value in (flag, os.environ.get("BENCH_DATA"), config_value):
        if value:
            return Path(os.path.expanduser(str(value))).resolve()
    return Path("data").resolve()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _unreadable(paths: list[Path]) -> list[str]:
    """What is wrong with each file that cannot be read ("missing", "not a file", "not readable")."""
    problems = []
    for path in paths:
        if not path.exists():
            problems.append(f"{path.name} (missing)")
        elif not path.is_file():
            problems.append(f"{path.name} (not a file)")
        elif not os.access(path, os.R_OK):
            problems.append(f"{path.name} (not readable)")
    return problems


def _local_files(root: Path, name: str) -> tuple[Path, list[Path]] | None:
    """(folder, the files both splits need) of the local copy bench would read, or None without one."""
    if name == "cifar10":
        if (root / "cifar-10-batches-bin").is_dir():
            folder = root / "cifar-10-batches-bin"
            return folder, [folder / n for n in CIFAR10_BIN_MD5]
        if (root / "cifar-10-batches-py").is_dir():
            folder = root / "cifar-10-batches-py"
            return folder, [folder / n for n in [*CIFAR10_PY_FILES["train"], *CIFAR10_PY_FILES["test"], "batches.meta"]]
        return None
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    copies = [(folder, [_find_idx(folder, stem) or folder / stem for stem in stems])
              for folder in _idx_folders(root, name) if folder.is_dir() and any(_find_idx(folder, s) for s in stems)]
    # the first complete copy (raw/ before the folder itself, as load_split reads them), else the first partial one
    return next((c for c in copies if not _unreadable(c[1])), copies[0] if copies else None)


def check_files(name: str, root: str | os.PathLike) -> None:
    """Before any work: a local copy of the dataset must have every file of both splits, readable. (A data root
    without any copy is left to `load_split`, which downloads it or says where it looked.)"""
    dataset_info(name)
    found = _local_files(Path(root), name)
    if found is None:
        return
    folder, files = found
    problems = _unreadable(files)
    if problems:
        raise DataError(f"The {name} copy in {folder} is incomplete: {', '.join(problems)}. Restore those files "
                        f"(or delete the folder so that bench downloads the dataset), or point the data root at a "
                        f"complete copy with `--data-root PATH` or `export BENCH_DATA=PATH`.")


def _read_cifar_bin(folder: Path, split: str):
    import numpy as np
    import torch

    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    problems = _unreadable([folder / n for n in names])
    if problems:
        raise DataError(f"The CIFAR-10 copy in {folder} is incomplete: {', '.join(problems)}. Restore those files "
                        f"or point the data root at a complete copy (`--data-root PATH` or `export BENCH_DATA=PATH`).")
    xs, ys = [], []
    for n in names:
        path = folder / n
        if _md5(path) != CIFAR10_BIN_MD5[n]:
            raise DataError(f"{path} does not match the official CIFAR-10 md5 {CIFAR10_BIN_MD5[n]}; "
                            f"the copy is corrupt or not the official binary version. Replace it.")
        rec = np.fromfile(path, np.uint8).reshape(-1, 3073)
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_cifar_py(root: Path, split: str, download: bool):
    import numpy as np
    import torch
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    problems = _unreadable([folder / n for n in [*CIFAR10_PY_FILES[split], "batches.meta"]])
    if problems:
        raise DataError(f"The CIFAR-10 copy in {folder} is incomplete: {', '.join(problems)}. Restore those files "
                        f"or point the data root at a complete copy (`--data-root PATH` or `export BENCH_DATA=PATH`).")
    ds = CIFAR10(str(root), train=(split == "train"), download=download)
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return x, torch.tensor(ds.targets, dtype=torch.int64)


def _read_idx(path: Path) -> np.ndarray:
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise DataError(f"{path} is not a uint8 idx file (magic {magic:#x}).")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}.")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folders(root: Path, name: str) -> list[Path]:
    base = root / IDX_FOLDERS[name]
    return [base / "raw", base]


def _read_idx_dataset(root: Path, name: str, split: str):
    import numpy as np
    import torch

    img_stem, lbl_stem = IDX_FILES[split]
    for folder in _idx_folders(root, name):
        img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        if img and lbl:
            x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
            y = torch.from_numpy(_read_idx(lbl).astype(np.int64))
            if len(x) != len(y):
                raise DataError(f"{img} has {len(x)} images but {lbl} has {len(y)} labels.")
            return x, y
    return None


def _download(root: Path, name: str) -> None:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _searched(root: Path, name: str) -> str:
    if name == "cifar10":
        return f"{root / 'cifar-10-batches-bin'} and {root / 'cifar-10-batches-py'}"
    return " and ".join(str(f) for f in _idx_folders(root, name))


@lru_cache(maxsize=8)
def load_split(name: str, split: str, root: str, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 N×C×H×W, labels int64 N) in the official order."""
    dataset_info(name)
    if split not in ("train", "test"):
        raise DataError(f"Unknown split '{split}'. Allowed: train, test.")
    root_p = Path(root)

    def try_local():
        if name == "cifar10":
            if (root_p / "cifar-10-batches-bin").is_dir():
                return _read_cifar_bin(root_p / "cifar-10-batches-bin", split)
            if (root_p / "cifar-10-batches-py").is_dir():
                return _read_cifar_py(root_p, split, download=False)
            return None
        return _read_idx_dataset(root_p, name, split)

    def read_local():
        try:
            return try_local()
        except (DataError, MemoryError):
            raise
        except Exception as e:  # unreadable, truncated or not the official format: one error naming the root
            raise DataError(f"Could not read dataset '{name}' ({split}) from the data root {root_p}: "
                            f"{type(e).__name__}: {e}. Replace the damaged files, or point the data root at a good "
                            f"copy with `--data-root PATH` or `export BENCH_DATA=PATH`.") from None

    found = read_local()
    download = download and os.environ.get("BENCH_NO_DOWNLOAD", "") in ("", "0")
    if found is None and download:
        try:
            _download(root_p, name)
        except Exception as e:  # no network, read-only folder, ...
            raise DataError(
                f"Dataset '{name}' was not found in the data root {root_p} (searched {_searched(root_p, name)}) "
                f"and downloading it failed ({type(e).__name__}: {e}). Point the data root at a copy with "
                f"`export BENCH_DATA=/path/to/data` or `--data-root /path/to/data` (this repository's CI uses "
                f"../shared/data)."
            ) from None
        found = read_local()
    if found is None:
        raise DataError(
            f"Dataset '{name}' was not found in the data root {root_p} (searched {_searched(root_p, name)}). "
            f"Point the data root at a copy with `export BENCH_DATA=/path/to/data` or `--data-root /path/to/data`."
        )
    return found


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def subset_indices(n_total: int, n: int | None, seed: int, salt: str) -> torch.Tensor:
    """Deterministic seeded subset (the same for every defense and attack at a given seed)."""
    import torch

    if n is None or n <= 0 or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(int(hashlib.sha256(f"{salt}:{seed}".encode()).hexdigest()[:15], 16))
    return torch.randperm(n_total, generator=g)[:n].sort().values


def load_subset(name: str, split: str, root: Path, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] and labels for a seeded subset of a split."""
    x, y = load_split(name, split, str(root))
    idx = subset_indices(len(x), n, seed, f"{name}/{split}")
    return to_float(x[idx]), y[idx]
