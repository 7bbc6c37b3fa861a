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
import math
import os
import pickle
import re
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from .errors import BenchError


class StoreError(BenchError):
    """A results table, artifact or folder bench cannot use as it is (the message says what to do)."""


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: results are read by CI uploads and other users (0644)


def content_hash(obj) -> str:
    """Stable short hash of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 files
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


def _remedy(path: Path, also: Path | None = None) -> str:
    extra = f" and {also}" if also is not None and also.exists() else ""
    return f"Delete {path}{extra} and run the same command again: bench recreates it (a checkpoint is retrained)."


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch bolds part of its refusal for a terminal


def torch_text(e: BaseException) -> str:
    """An error of torch as plain text: ANSI escape codes removed, lines joined."""
    return " ".join(line.strip() for line in _ANSI.sub("", str(e)).splitlines() if line.strip())


def refusal_reason(e: BaseException) -> str:
    """What weights_only refused, in torch's words ('Trying to load unsupported GLOBAL posix.system whose module
    posix is blocked.'), without torch's advice around it: bench's remedy is never to load with
    weights_only=False, which would run the payload."""
    lines = [line.strip() for line in _ANSI.sub("", str(e)).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "nsupported" in line:
            line = line.removeprefix("WeightsUnpickler error:").strip()
            return (line.split(". ")[0].rstrip(".") + ".")[:200]
    return "an object other than tensors and plain containers"


def _quiet_torch_load(source, map_location):
    # torch warns (UserWarning, "please file an issue") about a pickle protocol other than 2 before refusing a
    # legacy pickle: bench's own message says what the file is and what to do, so that warning is only noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location=map_location, weights_only=True)


def _torch_load_bytes(data: bytes, path: Path, map_location="cpu", also: Path | None = None, remedy: str = ""):
    remedy = remedy or _remedy(path, also)
    try:
        return _quiet_torch_load(io.BytesIO(data), map_location)
    except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain containers
        raise StoreError(f"Refused to load {path}: it holds Python objects other than tensors, which bench never "
                         f"writes, so it may be malicious or made by another tool (torch: {refusal_reason(e)}). "
                         f"{remedy}") from None
    except Exception as e:  # a truncated or damaged file: zip / pickle / EOF errors
        raise StoreError(f"{path} is damaged and cannot be loaded ({type(e).__name__}: {torch_text(e)[:200]}); it "
                         f"is probably truncated (a full disk, an interrupted copy). {remedy}") from None


def safe_torch_load(path: Path, map_location="cpu"):
    """torch.load(weights_only=True) whose failures are one clear error naming the file and the remedy."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StoreError(f"Cannot read {path}: {e.strerror or e}.") from None
    return _torch_load_bytes(data, path, map_location)


_digests: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime, inode): keys are computed several times per cell. A file
    modified in the last seconds is hashed afresh every time: a rewrite of the same size within the file system's
    timestamp granularity would otherwise keep the old digest."""
    path = Path(path)
    try:
        st = path.stat()
        memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if memo in _digests:
            return _digests[memo]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise BenchError(f"Cannot read {path}: {e.strerror or e}.") from None
    if time.time() - st.st_mtime > 2:
        _digests[memo] = h.hexdigest()
    return h.hexdigest()


def read_weights(path: Path):
    """torch.load(weights_only=True) of a weights file, a user's or RobustBench's (a pickle payload is refused,
    never run), its failures one BenchError naming the file."""
    try:
        return _quiet_torch_load(path, "cpu")
    except pickle.UnpicklingError as e:
        raise BenchError(f"Refused to load {path}: it holds Python objects other than tensors (a pickle payload, "
                         f"which can run code when loaded); bench loads weights with torch.load(weights_only=True) "
                         f"only (torch: {refusal_reason(e)}). Save a state_dict: torch.save(model.state_dict(), "
                         f"PATH).") from None
    except Exception as e:
        raise BenchError(f"{path} is not a weights file torch can read ({type(e).__name__}: {torch_text(e)[:160]}). "
                         f"Save a state_dict: torch.save(model.state_dict(), PATH).") from None


_held = threading.local()  # the locks this thread holds: file_lock is re-entrant within a thread


class LockBusy(BlockingIOError):
    """file_lock(wait=False) found the lock held by another process or thread."""


@contextlib.contextmanager
def file_lock(path: Path, wait_message: str | None = None, wait: bool = True):
    """An advisory lock next to `path` (`<path>.lock`), so concurrent writers (threads, workers, processes) take
    turns. Re-entrant within a thread; `wait_message` is logged when another holder makes this one wait;
    `wait=False` raises LockBusy instead of waiting (the scheduler's loop must not stall on one cell)."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    held = _held.__dict__.setdefault("paths", {})
    key = (os.getpid(), os.path.abspath(lock_path))
    if key in held:
        yield
        return
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError as e:
        raise StoreError(f"Cannot create the lock file {lock_path}: {e.strerror or e}. Its folder must be a "
                         f"writable folder.") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(f"{lock_path} is held by another run") from None
            if wait_message:
                from . import progress

                progress.log(wait_message)
            fcntl.flock(lock, fcntl.LOCK_EX)
        held[key] = True
        try:
            yield
        finally:
            held.pop(key, None)
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and check that files can be written in it, before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"The {what} {path} is a file, not a folder. Point it at a folder (--results-dir, or "
                         f"results_dir / cache_dir in bench.toml).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"Cannot create the {what} {path}: {e.strerror or e}. Choose a writable folder "
                         f"(--results-dir, or results_dir / cache_dir in bench.toml).") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bench-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StoreError(f"The {what} {path} is not writable ({e.strerror or e}): no result could be saved there. "
                         f"Make it writable or choose another folder (--results-dir, or results_dir / cache_dir in "
                         f"bench.toml).") from None
    return path


def ensure_cache_dir(path: Path) -> Path:
    """The cache folder before a command's work: created when missing (and then checked writable); an existing one
    is taken as it is, even read-only, since a run whose checkpoints are all in it only reads them. Whatever
    writes there (a training, a copy from the model zoo, a training's lock) checks it first, with the message."""
    path = Path(path)
    if path.is_dir():
        return path
    return ensure_writable_dir(path, "cache folder")


class ArtifactCache:
    """Content-addressed artifacts: `<root>/<kind>/<key>.pt` plus a readable `<key>.json` of what made it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).exists()

    def save(self, kind: str, key: str, payload: dict, meta: dict) -> Path:
        target = self.path(kind, key)
        buf = io.BytesIO()
        torch.save({**payload, "meta_json": json.dumps(meta, default=str)}, buf)
        data = buf.getvalue()
        # Two processes that computed the same artifact (test workers sharing a cache, scheduler workers) take turns,
        # and the second keeps the first's whole copy: its .json and .pt are written as two files, and rewriting
        # them while another process reads would pair one writer's metadata (timings differ) with the other's bytes.
        # A damaged copy is replaced.
        with file_lock(target):
            if self.has(kind, key):
                try:
                    self._read_verified(kind, key)
                    return target
                except StoreError:
                    pass
            # the readable metadata records the artifact's sha256, so `load` detects a truncated or altered file
            atomic_write_json(self.path(kind, key, ".json"),
                              {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
            atomic_write_bytes(target, data)
        return target

    def _read_verified(self, kind: str, key: str) -> tuple[bytes, bool]:
        """The artifact's bytes, checked against the sha256 in its metadata (StoreError with the remedy when they
        differ), and whether there was a sha256 to check."""
        path, side = self.path(kind, key), self.path(kind, key, ".json")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoreError(f"Cannot read the cached artifact {path}: {e.strerror or e}.") from None
        try:
            recorded = json.loads(side.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None  # entries cached before sha256 was recorded are loaded unverified
        if recorded and hashlib.sha256(data).hexdigest() != recorded:
            raise StoreError(f"{path} is damaged: its sha256 differs from the one recorded in {side} when it was "
                             f"saved ({len(data)} bytes now), e.g. a truncated copy. {_remedy(path, side)}")
        return data, bool(recorded)

    def verify(self, kind: str, key: str) -> None:
        """Raise StoreError (naming the file and the remedy) when the cached entry cannot be loaded: the scheduler
        checks each checkpoint it will use once, before its cells run, instead of each cell failing on it."""
        data, checked = self._read_verified(kind, key)
        if not checked:  # no sha256 recorded: only a load tells whether the file is whole
            _torch_load_bytes(data, self.path(kind, key), also=self.path(kind, key, ".json"))

    def load(self, kind: str, key: str) -> tuple[dict, dict]:
        path, side = self.path(kind, key), self.path(kind, key, ".json")
        data, _ = self._read_verified(kind, key)
        payload = _torch_load_bytes(data, path, also=side)
        try:
            return payload, json.loads(payload.pop("meta_json"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StoreError(f"{path} is not an artifact bench wrote (no metadata inside). "
                             f"{_remedy(path, side)}") from None


RESULT_COLUMNS = [
    "cell", "dataset", "defense", "attack", "profile", "seed", "norm", "eps", "status",
    "clean_acc", "robust_acc", "ci_low", "ci_high", "n", "n_fooled",
    "success_rate", "mean_norm", "median_norm", "queries",
    "forward_passes", "backward_passes", "wall_s", "device", "git_sha", "versions", "config_hash",
    "defense_ckpt", "flags", "warnings", "checks", "timestamp",
]


REQUIRED_COLUMNS = ("cell", "dataset", "defense", "attack", "profile", "seed", "status")
_EMPTY_ROW = dict.fromkeys(RESULT_COLUMNS, "")
_MOVE_AWAY = ("Restore it from a backup, or move it away (bench then starts a new results.csv); bench never "
              "rewrites a table it cannot read.")


class _Parsed:
    def __init__(self, header=(), rows=(), header_raw="", good_raw=(), bad=()):
        self.header, self.rows, self.header_raw = list(header), list(rows), header_raw
        self.good_raw, self.bad = list(good_raw), list(bad)  # bad: (line number, raw text, reason)


def _finite_or_empty(value) -> bool:
    if value is None or str(value) == "":
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _row_problem(r: dict) -> str:
    """Why a row (read or about to be written) is not one bench may take as a cell's state ("" when it is)."""
    if not str(r.get("cell") or "").strip():
        return "no cell key"
    if not str(r.get("status") or "").strip():
        return "no status"
    if not _finite_or_empty(r.get("eps", "")):
        return f"eps {r['eps']!r} is not a finite number"
    return ""


FINISHED = "ok"  # the status of a row that holds a measurement; failed and blocked rows hold a reason only


class CellRows:
    """The row that stands for each cell, chosen the one way every table, board, export, regression check and
    `bench status` uses: a cell's latest finished row; a row that did not finish (failed, blocked) only when no
    attempt of the cell finished. results.csv keeps every attempt, so an attempt that failed after a finished one
    (`--force`, another --n-test, a checkpoint damaged since) never hides the number already measured; it is kept
    in `newer_failure` so the tables can say that the last attempt failed and why.

    `key(row)` says which rows are attempts of one cell (the tables: dataset, defense, attack, profile, seed;
    `bench status`: the cell's content key). Rows are ordered by timestamp, then by their place in the file, so
    the row written last wins among equal timestamps."""

    def __init__(self, rows: list[dict], key):
        ordered = [r for _, r in sorted(enumerate(rows), key=lambda ir: (str(ir[1].get("timestamp", "")), ir[0]))]
        self.shown: dict = {}
        self.newer_failure: dict = {}  # key -> the latest unfinished attempt newer than the shown finished row
        for r in ordered:
            k = key(r)
            finished = r.get("status") == FINISHED
            if finished or self.shown.get(k, {}).get("status") != FINISHED:
                self.shown[k] = r
                self.newer_failure.pop(k, None)
            else:
                self.newer_failure[k] = r

    def failure_note(self, k) -> str:
        """'a newer attempt of this cell failed: <reason>' ("" when none): the footnote beside a finished row."""
        r = self.newer_failure.get(k)
        if r is None:
            return ""
        reason = str(r.get("warnings") or "no reason recorded")
        return (f"a newer attempt of this cell failed ({r.get('status') or 'failed'}, "
                f"{r.get('timestamp') or 'no date'}): {reason}")


class ResultsStore:
    """One CSV row per finished cell (append-only, rewritten atomically) + one JSON manifest per cell.

    The table is checked on every read: an unreadable file or one without the key columns is refused with a
    message; a malformed row (torn, wrong number of fields, no cell key, a non-finite eps) is never taken as
    finished: it is moved to results.csv.corrupt-<time>, with a warning. Columns bench does not know are kept."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.csv_path = self.root / "results.csv"
        self.manifest_dir = self.root / "runs"
        # finished rows per cell when this object last read the table (None: never read). A row that another
        # process wrote for a cell since then means that process computed the cell concurrently: `append` then
        # keeps its row instead of writing the cell twice.
        self._known: Counter | None = None

    def rows(self) -> list[dict]:
        rows = self._read().rows
        self._known = Counter(r["cell"] for r in rows if r["status"] == "ok")
        return rows

    def ok_rows(self, cell: str) -> list[dict]:
        return [r for r in self.rows() if r["cell"] == cell and r["status"] == "ok"]

    def has(self, cell: str) -> bool:
        return bool(self.ok_rows(cell))

    def cell_lock(self, cell: str, wait_message: str | None = None, wait: bool = True):
        """Held while one process computes a cell and writes its row, so a concurrent run of the same cell waits
        (`wait=False`: raises LockBusy), then finds the row and skips the cell."""
        return file_lock(self.root / "locks" / f"cell-{cell}", wait_message, wait)

    def append(self, row: dict, manifest: dict) -> bool:
        """Write one row (and its manifest); False when another process finished this cell since this object
        last read the table: its row is kept and this one is not written."""
        unknown = set(row) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        cell = row.get("cell")
        problem = _row_problem(row)
        if problem:
            raise StoreError(f"Refusing to write a malformed row to {self.csv_path} ({problem}): {row}")
        with file_lock(self.csv_path):
            # every write of results.csv holds this lock, so a temporary file of it found now belongs to a writer
            # killed between its write and its rename (kill -9): nothing will ever rename it
            for stale in self.root.glob(f".{self.csv_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            parsed = self._read()
            done = sum(r["cell"] == cell and r["status"] == "ok" for r in parsed.rows)
            if self._known is not None and done > self._known.get(cell, 0):
                from . import progress

                progress.log(f"[{row.get('defense', '')} × {row.get('attack', '')}] cell {cell} was finished by "
                             f"another run meanwhile: its row in {self.csv_path} is kept, this one is not written.")
                self._known[cell] = done
                return False
            atomic_write_json(self.manifest_dir / f"{cell}.json", {"row": row, **manifest})
            columns = RESULT_COLUMNS + [c for c in parsed.header if c not in RESULT_COLUMNS]
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for r in parsed.rows:
                if r["cell"] == cell and r.get("status") != "ok":
                    continue  # a failed or blocked attempt of this cell is superseded by the new row
                writer.writerow({k: r.get(k, "") for k in columns})
            writer.writerow({k: row.get(k, "") for k in columns})
            atomic_write_bytes(self.csv_path, out.getvalue().encode())
            if self._known is not None:
                self._known[cell] = done + (row.get("status") == "ok")
        return True

    # ------------------------------------------------------------------ reading and checking the table
    def _read(self) -> _Parsed:
        parsed = self._parse()
        if parsed.bad:
            with file_lock(self.csv_path):  # re-read under the lock: another writer may have changed it
                parsed = self._parse()
                if parsed.bad:
                    self._quarantine(parsed)
        return parsed

    def _parse(self) -> _Parsed:
        path = self.csv_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return _Parsed()
        except OSError as e:
            raise StoreError(f"Cannot read {path}: {e.strerror or e}.") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise StoreError(f"{path} is not a results table bench wrote: it is not UTF-8 text (byte "
                             f"{data[e.start]:#04x} on line {line}). {_MOVE_AWAY}") from None
        if not text.strip():
            return _Parsed()
        lines = io.StringIO(text, newline="").readlines()
        records: list[tuple[int, int, list[str]]] = []  # (first line index, end line index, fields)
        reader = csv.reader(iter(lines))
        start = 0
        try:
            for fields in reader:
                records.append((start, reader.line_num, fields))
                start = reader.line_num
        except csv.Error as e:
            if not records or reader.line_num < len(lines):
                raise StoreError(f"{path} line {reader.line_num} cannot be read as CSV ({e}). {_MOVE_AWAY}") from None
            records.append((start, len(lines), None))  # the last record is broken: treated as torn below
        header = records[0][2] or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing or len(set(header)) != len(header):
            what = (f"has no {', '.join(repr(c) for c in missing)} column" if missing
                    else "has a column name twice")
            raise StoreError(f"{path} {what} (its header line: {','.join(header)[:300]}), so bench cannot tell "
                             f"which cell each row is or whether it finished. {_MOVE_AWAY}")
        parsed = _Parsed(header=header, header_raw="".join(lines[:records[0][1]]))
        torn_end = not text.endswith(("\n", "\r"))
        for i, (lo, hi, fields) in enumerate(records[1:], start=1):
            raw = "".join(lines[lo:hi])
            if fields == []:
                continue  # a blank line
            reason = ""
            if fields is None or (torn_end and i == len(records) - 1):
                reason = "torn: the file ends inside it"
            elif len(fields) != len(header):
                reason = f"{len(fields)} fields where the header has {len(header)}"
            else:
                # a column bench writes but this file lacks (an older or hand-edited table) reads as empty, as in
                # a row that has no value for it: readers never meet a missing key
                r = {**_EMPTY_ROW, **dict(zip(header, fields))}
                reason = _row_problem(r)
            if reason:
                parsed.bad.append((lo + 1, raw, reason))
            else:
                parsed.rows.append(r)
                parsed.good_raw.append(raw)
        return parsed

    def _quarantine(self, parsed: _Parsed) -> None:
        from . import progress

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        corrupt = self.csv_path.with_name(f"{self.csv_path.name}.corrupt-{stamp}")
        n = 1
        while corrupt.exists():
            n += 1
            corrupt = self.csv_path.with_name(f"{self.csv_path.name}.corrupt-{stamp}-{n}")
        where = "; ".join(f"line {line}: {why}" for line, _, why in parsed.bad)
        bad_text = "".join(raw if raw.endswith(("\n", "\r")) else raw + "\n" for _, raw, _ in parsed.bad)
        try:
            atomic_write_bytes(corrupt, (parsed.header_raw + bad_text).encode())
            atomic_write_bytes(self.csv_path, (parsed.header_raw + "".join(parsed.good_raw)).encode())
        except OSError as e:
            raise StoreError(f"{self.csv_path} has malformed rows ({where}) and bench could not move them to "
                             f"{corrupt} ({e.strerror or e}). Delete or repair those lines.") from None
        progress.log(f"warning: {self.csv_path}: moved {len(parsed.bad)} malformed row(s) to {corrupt} ({where}). "
                     f"A torn or hand-edited row is never taken as a finished cell: the next run recomputes it.")
