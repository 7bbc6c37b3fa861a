"""Atomic files, content-addressed artifacts and the append-only results table.

Every write goes to a temporary file in the same folder, is fsynced and renamed over the target, so a crash
leaves either the old or the new file, never a torn one."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch


def content_hash(obj) -> str:
    """Stable short hash of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: Path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def file_lock(path: Path):
    """An advisory lock next to `path`, so concurrent writers (workers, processes) take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ArtifactCache:
    """Content-addressed artifacts: `<root>/<kind>/<key>.pt` plus a readable `<key>.json` of what made it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).exists()

    def save(self, kind: str, key: str, payload: dict, meta: dict) -> Path:
        atomic_write_json(self.path(kind, key, ".json"), meta)
        target = self.path(kind, key)
        atomic_torch_save({**payload, "meta_json": json.dumps(meta, default=str)}, target)
        return target

    def load(self, kind: str, key: str) -> tuple[dict, dict]:
        payload = safe_torch_load(self.path(kind, key))
        return payload, json.loads(payload.pop("meta_json"))


RESULT_COLUMNS = [
    "cell", "dataset", "defense", "attack", "profile", "seed", "norm", "eps", "status",
    "clean_acc", "robust_acc", "ci_low", "ci_high", "n", "n_fooled",
    "success_rate", "mean_norm", "median_norm", "queries",
    "forward_passes", "backward_passes", "wall_s", "device", "git_sha", "versions", "config_hash",
    "defense_ckpt", "flags", "warnings", "timestamp",
]


class ResultsStore:
    """One CSV row per finished cell (append-only, rewritten atomically) + one JSON manifest per cell."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.csv_path = self.root / "results.csv"
        self.manifest_dir = self.root / "runs"

    def rows(self) -> list[dict]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as f:
            return list(csv.DictReader(f))

    def has(self, cell: str) -> bool:
        return any(r["cell"] == cell and r["status"] == "ok" for r in self.rows())

    def append(self, row: dict, manifest: dict) -> None:
        unknown = set(row) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        with file_lock(self.csv_path):
            atomic_write_json(self.manifest_dir / f"{row['cell']}.json", {"row": row, **manifest})
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for r in self.rows():
                if r["cell"] == row["cell"] and r.get("status") != "ok":
                    continue  # a failed or blocked attempt of this cell is superseded by the new row
                writer.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
            atomic_write_bytes(self.csv_path, out.getvalue().encode())
