"""The model zoo: checkpoints that took real compute, committed in the repository (settings.zoo_dir, by default
results/zoo/) so that a fresh clone attacks them without retraining and a lent GPU's trainings outlive the machine.

An entry is the checkpoint cache's own pair, `<key>.pt` and its card `<key>.json` (the cache's metadata: resolved
config, training log, provenance, sha256) plus what a reader of the zoo wants first (entry, dataset, profile, clean
accuracy, size). Keys are the cache's content keys (bench.runner.checkpoint_key), so a zoo entry is found exactly
when the resolved config, dataset and seed are the ones it was trained with. `bench run` and the scheduler look
here after the local cache and before training, verify the sha256 and copy the entry into the cache."""
from __future__ import annotations

import json
from pathlib import Path

from . import progress
from .errors import BenchError
from .store import (ArtifactCache, LockBusy, StoreError, _torch_load_bytes, atomic_write_bytes, atomic_write_json,
                    file_lock)

KIND = "checkpoints"


def zoo_root(cfg) -> Path:
    return cfg.resolve_path(cfg.settings.zoo_dir)


class ModelZoo:
    def __init__(self, root: Path, max_mb: float = 100.0):
        self.root, self.max_mb = Path(root), max_mb
        # entries live directly in the zoo folder (results/zoo/<key>.pt), not in a kind sub-folder
        self._cache = _FlatCache(self.root)

    @classmethod
    def of(cls, cfg) -> "ModelZoo":
        return cls(zoo_root(cfg), cfg.settings.zoo_max_mb)

    def has(self, key: str) -> bool:
        return self._cache.has(KIND, key)

    def cards(self) -> list[dict]:
        """Every entry's card (a card that does not parse is reported as damaged by `verify`, skipped here)."""
        out = []
        for side in sorted(self.root.glob("*.json")):
            try:
                card = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(card, dict):
                out.append({**card, "key": side.stem})
        return out

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.root.glob("*.pt")) / 2**20

    def verify(self, key: str) -> tuple[dict, bytes]:
        """The entry's card and checkpoint bytes; StoreError naming the file and the remedy when the bytes differ
        from the card's sha256, or it has no sha256 to check, or they do not load with weights_only=True."""
        side = self._cache.path(KIND, key, ".json")
        try:
            card = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"The model zoo card {side} cannot be read ({e}). Restore it with `git checkout -- "
                             f"{side}` or remove the entry (`bench zoo remove {key}`).") from None
        if not isinstance(card, dict) or not card.get("sha256"):
            raise StoreError(f"The model zoo card {side} records no sha256: a zoo entry must be verifiable. "
                             f"Re-add it with `bench zoo add`.")
        data, _ = self._cache._read_verified(KIND, key)  # against the card's sha256
        _torch_load_bytes(data, self._cache.path(KIND, key), also=side)  # a pickle payload is refused, never run
        return card, data

    def add(self, cache: ArtifactCache, key: str, card: dict) -> Path:
        """Copy a cached checkpoint (verified) into the zoo with its card; refused past the zoo's size limit."""
        src, side = cache.path(KIND, key), cache.path(KIND, key, ".json")
        if not src.exists():
            raise BenchError(f"No cached checkpoint {src}: train it first (`bench train` with the same --defense, "
                             f"--dataset, --profile and --seed), then add it.")
        cache.verify(KIND, key)
        meta = json.loads(side.read_text(encoding="utf-8"))
        mb = src.stat().st_size / 2**20
        have = self.size_mb() - (self._cache.path(KIND, key).stat().st_size / 2**20 if self.has(key) else 0.0)
        if have + mb > self.max_mb:
            raise BenchError(f"Adding {src.name} ({mb:.1f} MB) would grow the model zoo {self.root} to "
                             f"{have + mb:.1f} MB, over zoo_max_mb = {self.max_mb:g} in [settings]. Keep larger "
                             f"checkpoints outside the repository.")
        atomic_write_bytes(self._cache.path(KIND, key), src.read_bytes())
        atomic_write_json(self._cache.path(KIND, key, ".json"), {**meta, **card, "zoo_mb": round(mb, 3)})
        self.verify(key)
        return self._cache.path(KIND, key)

    def remove(self, key: str) -> None:
        for suffix in (".pt", ".json"):
            self._cache.path(KIND, key, suffix).unlink(missing_ok=True)

    def restore(self, cache: ArtifactCache, key: str, label: str) -> bool:
        """Copy the zoo's entry `key` (sha256 verified) into the local cache; False when the zoo has none."""
        if not self.has(key) or cache.has(KIND, key):
            return False
        card, data = self.verify(key)  # the bytes written below are the ones verified (read once)
        from .store import ensure_writable_dir

        ensure_writable_dir(cache.root, "cache folder")
        # under the lock a training of this key takes (bench.runner.train, the scheduler's training jobs), so a
        # trained card never ends up next to the zoo's checkpoint or vice versa. Held by another run (it trains or
        # restores this key now): its checkpoint will do; a caller that needs it waits on that lock itself
        try:
            with file_lock(cache.root / "locks" / f"{KIND}-{key}", wait=False):
                if cache.has(KIND, key):
                    return False
                # the card first, the checkpoint last (atomic): `cache.has` is true only once both are whole
                atomic_write_json(cache.path(KIND, key, ".json"), card)
                atomic_write_bytes(cache.path(KIND, key), data)
        except LockBusy:
            return False
        progress.log(f"[{label}] checkpoint {key} from the model zoo {self._cache.path(KIND, key)} (sha256 verified)")
        return True


class _FlatCache(ArtifactCache):
    """An ArtifactCache whose entries sit directly in its root (the zoo has one kind only)."""

    def path(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / f"{key}{suffix}"


def restore_from_zoo(env, key: str, label: str) -> bool:
    """bench.runner.train (every cell, on either run path): a checkpoint missing from the cache but in the zoo enters
    the cache (verified) instead of being trained. The scheduler's plan only asks `ModelZoo.has` (it writes nothing)."""
    return ModelZoo.of(env.cfg).restore(env.cache, key, label)
