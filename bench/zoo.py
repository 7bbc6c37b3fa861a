"""The model zoo: checkpoints that took real compute, committed in the repository (settings.zoo_dir, by default
results/zoo/) so that a fresh clone attacks them without retraining and trainings run on another machine (a GPU) are kept.

An entry is the checkpoint cache's own pair, `<key>.pt` and its card `<key>.json` (the cache's metadata: resolved
config, training log, provenance, sha256) plus what a reader of the zoo wants first (entry, dataset, profile, clean
accuracy, size). Keys are the cache's content keys (bench.runner.checkpoint_key), so a zoo entry is found exactly
when the resolved config, dataset and seed are the ones it was trained with. `bench run` and the scheduler look
here after the local cache and before training, verify the sha256 and copy the entry into the cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
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

    def has_entry(self, key: str) -> bool:
        """Any file of the entry (checkpoint or card): an entry with one of them gone is still the zoo's, and
        `verify` says what is missing rather than bench training it over."""
        return any(self._cache.path(KIND, key, suffix).exists() for suffix in (".pt", ".json"))

    def verify(self, key: str) -> tuple[dict, bytes]:
        """The entry's card and checkpoint bytes; StoreError naming the file and the remedy that keeps the
        committed data (restore it from git, or what differs) when a file is missing, the bytes differ from the
        card's sha256, there is no sha256 to check, or they do not load with weights_only=True."""
        pt, side = self._cache.path(KIND, key), self._cache.path(KIND, key, ".json")
        try:
            card = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"The model zoo entry {key} has its checkpoint {pt} but no card {side}. "
                             f"{restore_advice([side], 'Put the card back')}") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"The model zoo card {side} cannot be read ({e}). "
                             f"{restore_advice([side], 'Put the card back')}") from None
        if not isinstance(card, dict) or not card.get("sha256"):
            raise StoreError(f"The model zoo card {side} records no sha256: a zoo entry must be verifiable. "
                             f"{restore_advice([side], 'Re-add the entry with `bench zoo add`')}")
        what = f"the model zoo entry {key} ({describe(card)})"
        try:
            data = pt.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"The checkpoint {pt} of {what} is missing; its card {side} is there. "
                             f"{restore_advice([pt], 'Put the checkpoint back')} {RETRAIN_HINT}") from None
        except OSError as e:
            raise StoreError(f"Cannot read the checkpoint {pt} of {what}: {e.strerror or e}.") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != card["sha256"]:
            size = f", {card['bytes']} bytes" if card.get("bytes") is not None else ""
            raise StoreError(f"The checkpoint {pt} of {what} does not match its card {side}: its sha256 is "
                             f"{digest[:16]}… ({len(data)} bytes), the card records {card['sha256'][:16]}…{size}. "
                             f"{restore_advice([pt, side], 'Copy both files again from where this zoo came from')} "
                             f"{RETRAIN_HINT}")
        # a pickle payload is refused, never run
        _torch_load_bytes(data, pt, remedy=restore_advice([pt, side], "Replace both files with a checkpoint bench "
                                                                      "wrote (`bench zoo add`)"))
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

    def restore(self, cache: ArtifactCache, key: str, label: str, retrain: bool = False) -> bool:
        """Copy the zoo's entry `key` (sha256 verified) into the local cache; False when the zoo has none. An entry
        with a file missing or damaged stops the run with the remedy (StoreError); `retrain` (bench run --retrain):
        False instead, and the caller trains the checkpoint into the local cache."""
        if not self.has_entry(key) or cache.has(KIND, key):
            return False
        try:
            card, data = self.verify(key)  # the bytes written below are the ones verified (read once)
        except StoreError as e:
            if not retrain:
                raise
            progress.log(f"[{label}] --retrain: training checkpoint {key} into the cache {cache.root}; the model zoo "
                         f"entry is left as it is ({e})")
            return False
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
    the cache (verified) instead of being trained. The scheduler's plan only asks `ModelZoo.has_entry` and verifies
    (it writes nothing)."""
    return ModelZoo.of(env.cfg).restore(env.cache, key, label, retrain=env.retrain)


RETRAIN_HINT = ("`bench run` and `bench train` do not train over a model zoo entry: they stop here unless told to, "
                "with --retrain (which trains the checkpoint into the local cache and leaves the zoo as it is).")


def describe(card: dict) -> str:
    """'natural, mnist, profile quick, seed 0, trained in 3189 s' from a zoo card."""
    parts = [str(card.get("entry", "?")), str(card.get("dataset", "?")), f"profile {card.get('profile', '?')}",
             f"seed {card.get('seed', '?')}"]
    if isinstance(card.get("train_seconds"), (int, float)):
        parts.append(f"trained in {card['train_seconds']:.0f} s")
    return ", ".join(parts)


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git, or a hung one: no advice from it
        return None


def restore_advice(paths: list[Path], otherwise: str) -> str:
    """The remedy that keeps the committed data: `git checkout -- <files>` for the files among `paths` that git
    tracks and whose copy here differs from the committed one (changed or deleted); when git tracks them but they
    equal the commit, that the committed files themselves disagree; else `otherwise` (the files are not in git)."""
    folder = next((p.parent for p in paths if p.parent.is_dir()), None)
    top = _git(["rev-parse", "--show-toplevel"], folder) if folder else None
    if top is None or top.returncode != 0:
        return f"{otherwise}."
    root = Path(top.stdout.strip())
    rel = [os.path.relpath(p.resolve(), root.resolve()) for p in paths]
    tracked = [r for r in rel if (t := _git(["ls-files", "--error-unmatch", "--", r], root)) and t.returncode == 0]
    if not tracked:
        return f"{otherwise} (git does not track {', '.join(rel)})."
    changed = [r for r in tracked if (d := _git(["diff", "--quiet", "HEAD", "--", r], root)) and d.returncode == 1]
    if not changed:
        return (f"The committed files themselves disagree ({', '.join(tracked)} equal the last commit): restore "
                f"them from the commit that added the entry (git log -- {tracked[0]}), or re-add the entry with "
                f"`bench zoo add`.")
    staged = any((d := _git(["diff", "--cached", "--quiet", "--", r], root)) and d.returncode == 1 for r in changed)
    try:
        here = Path.cwd().resolve()
        inside = here == root.resolve() or root.resolve() in here.parents
    except OSError:
        inside = False
    files = " ".join(str(Path(os.path.relpath(root / r, here))) if inside else r for r in changed)
    where = "" if inside else f"-C {root} "
    return (f"Restore the committed file{'s' if len(changed) > 1 else ''}: `git {where}checkout "
            f"{'HEAD ' if staged else ''}-- {files}`.")
