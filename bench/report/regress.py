"""Regression check: compare a matrix run with its committed baseline, results/baselines/<matrix>-<profile>-<device>.csv.

A baseline holds the cells of one [matrices.M] at one profile and seed, measured on one kind of device (cpu or
cuda): a smoke model trained on a CPU and one trained on a GPU are different models, so their numbers are not
comparable. Its sidecar <name>.json records the matrix, profile, seed, device kind, devices and the code version
(git SHA) it was measured at. `bench regress` expects exactly the cells of the matrix:
- a cell of the matrix that has no row in this run is a regression ("missing");
- a baseline cell outside the matrix (e.g. with --matrix naming a smaller one) is listed as "not in this run";
- a cell measured on another kind of device than the baseline's is an error (exit 2) unless allowed.

A compared cell regresses when
- its clean or robust accuracy (minimum-norm attacks: success rate) moves by at least `min_change` AND a
  two-sided two-proportion z-test on the counts gives p < alpha (both directions: a rise in robust accuracy is
  as suspicious as a drop, since a weakened attack looks like a stronger defense);
- its mean perturbation norm (minimum-norm attacks) moves by at least `norm_rtol` relative AND a Welch z-test on
  the per-sample norms gives p < alpha (without per-sample norms, the relative threshold alone decides);
- it stops finishing (status other than "ok");
- (minimum-norm attacks) its optimality, scored against the joint best per-sample norms of the baseline and this
  run, drops by at least `optimality_drop` below the baseline's (bench/report/regress_optimality.py; baselines
  written before it hold no per-sample norms and skip this check).
The test treats the two runs as independent samples. A re-run uses the same test points (same seed), so it is
conservative for small shifts; `min_change` absorbs what differs between machines of one device kind (CPU
kernels, GPU rounding: a few flipped points), and is set per matrix in [regress] of bench.toml from measurements.

Baselines are validated when read: a torn row, a missing column or a value that is not a number is an error
naming the file and line, never a false regression."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..config import RegressSettings, Thresholds, Tolerance  # noqa: F401  ([regress] of bench.toml, read by config)
from ..errors import BenchError
from ..store import atomic_write_bytes
from .regress_optimality import cell_of, compare_optimality, min_norm_evidence
from .tables import KEY, Results, to_float, is_min_norm

BASELINE_COLUMNS = [*KEY, "cell", "norm", "eps", "status", "n", "clean_acc", "robust_acc", "n_correct", "n_robust",
                    "success_rate", "n_fooled", "mean_norm", "norm_std", "git_sha", "device", "timestamp"]
EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2
META_FORMAT = 1
STATUSES = ("ok", "failed", "blocked")  # what bench.runner and the scheduler write
FRACTIONS = ("clean_acc", "robust_acc", "success_rate")
COUNTS = ("n_correct", "n_robust", "n_fooled")
REMEDY = ("Restore the committed file (`git checkout -- {path}`) or write it anew from a full matrix run "
          "(`bench regress --baseline {path} --write-baseline`; results/baselines/README.md).")


def device_kind(device: str) -> str:
    """'cpu:x86_64x2' -> 'cpu', 'cuda:NVIDIA H200' -> 'cuda' (the `device` column, bench.provenance.device_name)."""
    return str(device or "").split(":", 1)[0]


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of H0: both counts come from the same proportion (pooled z-test)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = k2 / n2 - k1 / n1
    if se == 0:
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff) / se / math.sqrt(2))


def welch_p(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> float:
    """Two-sided p-value for a difference of means (normal approximation, unequal variances)."""
    if n1 < 2 or n2 < 2:
        return 1.0 if m1 == m2 else 0.0
    se = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    if se == 0:
        return 1.0 if m1 == m2 else 0.0
    return math.erfc(abs(m2 - m1) / se / math.sqrt(2))


def record(results: Results, row: dict) -> dict:
    """One baseline record: the row's numbers plus the counts and norm spread the tests need."""
    n = int(to_float(row.get("n")))
    rec = {k: row.get(k, "") for k in BASELINE_COLUMNS if k in row}
    rec["n_correct"] = round(to_float(row.get("clean_acc")) * n) if row.get("clean_acc", "") != "" else ""
    rec["n_robust"] = round(to_float(row.get("robust_acc")) * n) if row.get("robust_acc", "") != "" else ""
    rec["norm_std"] = ""
    if is_min_norm(row) and row.get("mean_norm", "") != "":
        ps = (results.manifest(row) or {}).get("per_sample") or {}
        if ps.get("norm") and ps.get("fooled"):
            norms = [v for v, f in zip(ps["norm"], ps["fooled"]) if f]
            if len(norms) >= 2:
                mean = sum(norms) / len(norms)
                rec["norm_std"] = f"{math.sqrt(sum((v - mean) ** 2 for v in norms) / (len(norms) - 1)):.6g}"
    return {k: rec.get(k, "") for k in BASELINE_COLUMNS}


def cell_key(rec: dict) -> tuple:
    return tuple(str(rec[k]) for k in KEY)


def matrix_cells(cfg, matrix: str, profile: str, seed) -> list[tuple]:
    """The cell keys a `bench run --matrix M --profile P --seed S` writes, in the matrix's order."""
    cfg.check_choice("matrix", matrix, cfg.matrices)
    m = cfg.matrices[matrix]
    return [(d, df, a, str(profile), str(seed)) for d in m.datasets for df in m.defenses for a in m.attacks]


def snapshot(results: Results, cells) -> list[dict]:
    """Baseline records of the latest rows of `cells` (cell keys), or of every cell of these profiles (a set of
    profile names)."""
    if all(isinstance(c, str) for c in cells):
        rows = [r for r in results.latest.values() if r.get("profile") in cells]
    else:
        rows = [results.latest[k] for k in dict.fromkeys(cells) if k in results.latest]
    return [record(results, r) for r in sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEY))]


# ------------------------------------------------------------------------------------- reading a baseline


def _bad(path: Path, line: int | None, what: str) -> BenchError:
    where = f"{path}, line {line}" if line else str(path)
    return BenchError(f"Baseline {where}: {what}. Nothing was compared. {REMEDY.format(path=path)}")


def _check_number(path, line, col, value, rec) -> None:
    if value == "":
        return
    try:
        x = float(value)
    except ValueError:
        x = None
    if x is None or not math.isfinite(x):
        raise _bad(path, line, f"column {col} is {value!r}, not a finite number")
    if col in FRACTIONS and not 0 <= x <= 1:
        raise _bad(path, line, f"column {col} is {value}; allowed: a fraction from 0 to 1")
    if col in ("n", "seed", *COUNTS) and (x != int(x) or x < 0):
        raise _bad(path, line, f"column {col} is {value}; allowed: a whole number from 0")
    if col in COUNTS and x > to_float(rec["n"]):
        raise _bad(path, line, f"column {col} is {value}, more than the cell's n = {rec['n']}")


def _check_record(path: Path, line: int, rec: dict) -> None:
    """Every value the comparison reads: a bad one would otherwise become 0 and a false regression."""
    for col in KEY + ("status",):
        if rec[col] == "":
            raise _bad(path, line, f"column {col} is empty")
    if rec["status"] not in STATUSES:
        raise _bad(path, line, f"status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    for col in ("seed", "n", "eps", *FRACTIONS, *COUNTS, "mean_norm", "norm_std"):
        _check_number(path, line, col, rec[col], rec)
    if rec["status"] != "ok":
        return
    needed = ["n", "clean_acc", "n_correct"] + (["success_rate", "n_fooled"] if rec["success_rate"] != ""
                                                 else ["robust_acc", "n_robust"])
    empty = [c for c in needed if rec[c] == ""]
    if empty:
        raise _bad(path, line, f"a finished (ok) cell with no {', '.join(empty)}")
    if int(float(rec["n"])) < 1:
        raise _bad(path, line, "column n is 0; a finished cell has at least one test point")


def read_baseline(path: Path) -> list[dict]:
    """The records of a baseline CSV, validated (see _check_record): BenchError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"Baseline {path} not found. Write it from a full run of its matrix with "
                         f"`bench regress --baseline {path} --matrix M --write-baseline` (results/baselines/README.md).")
    data = path.read_bytes()
    what = "is not a CSV results file (a baseline is the CSV `bench regress --write-baseline` writes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # random bytes, a binary file: no row to call torn
        raise _bad(path, None, f"{what}: byte {data[e.start]:#04x} at offset {e.start} is not UTF-8 text") from None
    if not text.strip():
        raise _bad(path, None, "the file is empty")
    first = next(csv.reader([text.splitlines()[0]]), [])
    if "\x00" in text or not set(KEY) & set(first):
        raise _bad(path, 1, f"{what}: its first line is not a header naming the columns {', '.join(KEY)}")
    if not text.endswith("\n"):  # bench writes every row with its newline: a missing one means a cut-off write
        raise _bad(path, text.count("\n") + 1, "the last row has no line end: the file was cut off while written")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    missing = [c for c in BASELINE_COLUMNS if c not in header]
    if missing:
        raise _bad(path, 1, f"missing columns {', '.join(missing)} (a bench baseline has {', '.join(BASELINE_COLUMNS)})")
    records, seen = [], {}
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            raise _bad(path, line, f"{len(fields)} fields where the header has {len(header)} (a torn or hand-edited row)")
        rec = {k: v.strip() for k, v in zip(header, fields)}
        _check_record(path, line, rec)
        key = cell_key(rec)
        if key in seen:
            raise _bad(path, line, f"cell {'/'.join(key)} again (first on line {seen[key]})")
        seen[key] = line
        records.append({k: rec[k] for k in BASELINE_COLUMNS})
    if not records:
        raise _bad(path, None, "no cells, only a header")
    return records


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


META_KEYS = {"matrix": str, "profile": str, "seed": int, "device_kind": str, "devices": list, "code_version": str,
             "cells": int}


def read_meta(path: Path, records: list[dict]) -> dict:
    """The sidecar of a baseline: which matrix, profile, seed and device kind its cells are, and what code."""
    side = meta_path(path)
    if not side.is_file():
        raise BenchError(f"Baseline {path} has no sidecar {side} (its matrix, profile, seed, device kind and code "
                         f"version), so bench cannot tell which cells to expect. Write both from a full run of its "
                         f"matrix: `bench regress --baseline {path} --matrix M --write-baseline`.")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"Baseline sidecar {side} is not valid JSON ({e}). {REMEDY.format(path=path)}") from None
    if not isinstance(meta, dict):
        raise BenchError(f"Baseline sidecar {side} is not a JSON object. {REMEDY.format(path=path)}")
    for key, kind in META_KEYS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise BenchError(f"Baseline sidecar {side}: '{key}' is {meta.get(key)!r}; expected a {kind.__name__}. "
                             f"{REMEDY.format(path=path)}")
    if meta["cells"] != len(records):
        raise BenchError(f"Baseline sidecar {side} says {meta['cells']} cells but {path} holds {len(records)}: the two "
                         f"files are from different writes. {REMEDY.format(path=path)}")
    odd = [cell_key(r) for r in records if (r["profile"], r["seed"]) != (meta["profile"], str(meta["seed"]))
           or device_kind(r["device"]) != meta["device_kind"]]
    if odd:
        raise BenchError(f"Baseline {path}: cell {'/'.join(odd[0])} is not profile {meta['profile']}, seed "
                         f"{meta['seed']} on {meta['device_kind']} as {side} says. {REMEDY.format(path=path)}")
    return meta


# ------------------------------------------------------------------------------------- comparing


@dataclass
class Finding:
    key: tuple
    kind: str  # missing | failing | drop | rise | new | fixed | still-failing | config | not in this run
    metric: str = ""
    baseline: str = ""
    current: str = ""
    p: float | None = None
    regression: bool = False

    @property
    def where(self) -> str:
        dataset, defense, attack, profile, seed = self.key
        return f"{dataset}/{profile}/seed {seed}: {defense} × {attack}"

def _counts(rec: dict, metric: str) -> tuple[int, int]:
    """(successes, trials) behind a proportion metric."""
    n = int(to_float(rec["n"]))
    if metric == "clean_acc":
        return int(to_float(rec["n_correct"])), n
    if metric == "robust_acc":
        return int(to_float(rec["n_robust"])), n
    return int(to_float(rec["n_fooled"])), int(to_float(rec["n_correct"]))  # success rate among correct points


def _compare_cell(key, b: dict, c: dict, alpha: float, min_change: float, norm_rtol: float) -> list[Finding]:
    found = []
    if b["cell"] != c["cell"]:
        found.append(Finding(key, "config", "cell key", b["cell"], c["cell"]))
    min_norm = b.get("success_rate", "") != "" and c.get("success_rate", "") != ""
    for metric in ("clean_acc", "success_rate" if min_norm else "robust_acc"):
        k1, n1 = _counts(b, metric)
        k2, n2 = _counts(c, metric)
        if not n1 or not n2:
            continue
        p = two_proportion_p(k1, n1, k2, n2)
        delta = k2 / n2 - k1 / n1
        if abs(delta) >= min_change - 1e-12 and p < alpha:
            found.append(Finding(key, "drop" if delta < 0 else "rise", metric, f"{100 * k1 / n1:.1f} % (n {n1})",
                                 f"{100 * k2 / n2:.1f} % (n {n2})", p, regression=True))
    if min_norm and b["mean_norm"] != "" and c["mean_norm"] != "":
        m1, m2 = to_float(b["mean_norm"]), to_float(c["mean_norm"])
        rel = abs(m2 - m1) / m1 if m1 else float("inf") if m2 else 0.0
        if b["norm_std"] != "" and c["norm_std"] != "":
            p = welch_p(m1, to_float(b["norm_std"]), int(to_float(b["n_fooled"])), m2, to_float(c["norm_std"]),
                        int(to_float(c["n_fooled"])))
        else:
            p = None  # no per-sample spread recorded: the relative threshold alone decides
        if rel >= norm_rtol and (p is None or p < alpha):
            found.append(Finding(key, "drop" if m2 < m1 else "rise", "mean_norm", f"{m1:.4g}", f"{m2:.4g}", p,
                                 regression=True))
    return found


def compare(baseline: list[dict], current: list[dict], alpha: float = 0.05, min_change: float = 0.02,
            norm_rtol: float = 0.10, expected: list[tuple] | None = None) -> list[Finding]:
    """Findings of `current` against `baseline`. With `expected` (the cell keys of the matrix that ran) only those
    cells are compared: one without a current row is missing, a baseline cell outside them is "not in this run"."""
    base = {cell_key(r): r for r in baseline}
    cur = {cell_key(r): r for r in current}
    found: list[Finding] = []
    if expected is None:
        wanted = list(base)
    else:
        wanted = list(dict.fromkeys(expected))
        found += [Finding(k, "not in this run", baseline=b["status"]) for k, b in base.items() if k not in set(wanted)]
        cur = {k: c for k, c in cur.items() if k in set(wanted)}
    for key in wanted:
        b, c = base.get(key), cur.get(key)
        if c is None:
            found.append(Finding(key, "missing", baseline=b["status"] if b else "not in baseline", current="absent",
                                 regression=True))
        elif b is None:
            continue  # reported as new below
        elif c["status"] != "ok":
            kind = "failing" if b["status"] == "ok" else "still-failing"
            found.append(Finding(key, kind, "status", b["status"], c["status"], regression=kind == "failing"))
        elif b["status"] != "ok":
            found.append(Finding(key, "fixed", "status", b["status"], c["status"]))
        else:
            found += _compare_cell(key, b, c, alpha, min_change, norm_rtol)
    found += [Finding(key, "new", current=c["status"]) for key, c in cur.items() if key not in base]
    return found


def optimality_findings(meta: dict, results: Results, expected: list[tuple], drop: float) -> list[Finding]:
    """A minimum-norm cell whose optimality fell by >= `drop` below the baseline's, both scored against the joint
    best norms (a regression); one that rose by as much is listed as a change, not a regression."""
    stored = meta.get("min_norm_evidence") or {}
    wanted = {"|".join(k) for k in expected}
    stored = {k: v for k, v in stored.items() if k in wanted}
    if not stored:
        return []
    current = min_norm_evidence(results, [cell_of(k) for k in stored])
    found = []
    for key, before, now, shared in compare_optimality(stored, current):
        if abs(now - before) >= drop - 1e-12 and now != before:
            found.append(Finding(cell_of(key), "drop" if now < before else "rise", "optimality", f"{before:.3f}",
                                 f"{now:.3f} ({shared} points)", regression=now < before))
    return found


def _table(items: list[Finding]) -> list[str]:
    out = ["| cell | change | metric | baseline | current | p |", "|---|---|---|---|---|---|"]
    out += [f"| {f.where} | {f.kind} | {f.metric} | {f.baseline} | {f.current} | "
            f"{'' if f.p is None else f'{f.p:.2g}'} |" for f in items]
    return out + [""]


def report(findings: list[Finding], baseline_path: Path, n_cells: int, alpha: float, min_change: float,
           norm_rtol: float, current: list[dict], header: list[str] = ()) -> str:
    regressions = [f for f in findings if f.regression]
    elsewhere = [f for f in findings if f.kind == "not in this run"]
    info = [f for f in findings if not f.regression and f.kind != "not in this run"]
    shas = ", ".join(sorted({r["git_sha"] for r in current})) or "-"
    verdict = (f"**{len(regressions)} regression(s)** in {n_cells} compared cells" if regressions
               else f"**No regression** in {n_cells} compared cells")
    lines = ["# Regression report", "",
             f"Baseline `{baseline_path}`; current results at git {shas}. A cell regresses when clean / robust "
             f"accuracy (min-norm attacks: success rate) changes by ≥ {100 * min_change:g} points with "
             f"two-proportion p < {alpha:g}, its mean norm changes by ≥ {100 * norm_rtol:g} % (Welch p < {alpha:g}), "
             f"its optimality (min-norm attacks, against the joint best norms of both runs) drops beyond the "
             f"tolerance, it is missing from the run or it stops finishing.", "", *header, verdict, ""]
    if regressions:
        lines += ["## Regressions", "", *_table(regressions)]
    if info:
        lines += ["## Other changes (not regressions)", "", *_table(info)]
    if elsewhere:
        lines += ["## Baseline cells not in this run (not compared, not regressions)", "",
                  *[f"- {f.where}" for f in elsewhere], ""]
    return "\n".join(lines)


def _check_devices(meta: dict, current: list[dict], allow: bool, path: Path) -> list[str]:
    """A CPU baseline says nothing about a GPU run (other kernels, other trained models): an error unless allowed."""
    kinds = {device_kind(r["device"]) for r in current if r.get("device")}
    other = sorted(kinds - {meta["device_kind"]})
    if not other:
        return []
    devices = ", ".join(sorted({r["device"] for r in current if device_kind(r["device"]) in other}))
    if not allow:
        raise BenchError(f"This run's cells were measured on {', '.join(other)} ({devices}) but baseline {path} is "
                         f"for {meta['device_kind']} ({', '.join(meta['devices'])}): the numbers are not comparable. "
                         f"Compare with the baseline of this device kind (results/baselines/"
                         f"{meta['matrix']}-{meta['profile']}-{other[0]}.csv), or pass --allow-device-change.")
    return [f"Device kind changed ({meta['device_kind']} → {', '.join(other)}: {devices}), allowed by "
            f"--allow-device-change: differences may come from the device, not the code.", ""]


def _write_report(report_path: Path | None, text: str) -> None:
    if report_path is not None:
        atomic_write_bytes(Path(report_path), text.encode())


def run_regress(results: Results, baseline_path: Path, report_path: Path | None, cfg, matrix: str | None = None,
                profile: str | None = None, allow_device_change: bool = False, **given) -> tuple[int, str]:
    """Compare the latest rows of the matrix's cells with the baseline; returns (exit code, Markdown report).
    `given`: alpha / min_change / norm_rtol from the command line (None: bench.toml's [regress])."""
    baseline_path = Path(baseline_path)
    records = read_baseline(baseline_path)
    meta = read_meta(baseline_path, records)
    name = matrix or meta["matrix"]
    cfg.check_choice("matrix", name, cfg.matrices)
    profile = profile or meta["profile"]
    if cfg.matrices[name].profile not in (None, profile):
        raise BenchError(f"Matrix {name} runs at profile {cfg.matrices[name].profile} but baseline {baseline_path} "
                         f"is for profile {profile}: compare with results/baselines/{name}-"
                         f"{cfg.matrices[name].profile}-{meta['device_kind']}.csv.")
    if profile != meta["profile"]:
        raise BenchError(f"Baseline {baseline_path} is for profile {meta['profile']}, not {profile}: use "
                         f"results/baselines/{name}-{profile}-{meta['device_kind']}.csv (one baseline per matrix, "
                         f"profile and device kind).")
    expected = matrix_cells(cfg, name, profile, meta["seed"])
    current = snapshot(results, expected)
    if not current:
        raise BenchError(f"None of the {len(expected)} cells of matrix {name} (profile {profile}, seed {meta['seed']}) "
                         f"has a row in this results folder: run `bench run --matrix {name} --profile {profile} --seed "
                         f"{meta['seed']}` into it first (or pass the --results-dir it ran into).")
    header = _check_devices(meta, current, allow_device_change, baseline_path)
    # the tolerance belongs to the baseline: how far its cells move between runs without a code change
    t = _settings(cfg).thresholds(meta["matrix"], **given)
    findings = compare(records, current, t.alpha, t.min_change, t.norm_rtol, expected)
    findings += optimality_findings(meta, results, expected, t.optimality_drop)
    header = [f"Baseline: matrix {meta['matrix']}, profile {meta['profile']}, seed {meta['seed']}, "
              f"{meta['device_kind']} ({', '.join(meta['devices'])}), code {meta['code_version']}, "
              f"{meta['cells']} cells. This run: matrix {name}, {len(current)} of its {len(expected)} cells on "
              f"{', '.join(sorted({r['device'] for r in current}))}. Thresholds: {t.source}.", "", *header]
    compared = sum(1 for k in expected if k in {cell_key(r) for r in records})
    text = report(findings, baseline_path, compared, t.alpha, t.min_change, t.norm_rtol, current, header)
    _write_report(report_path, text)
    return (EXIT_REGRESSION if any(f.regression for f in findings) else EXIT_OK), text


def _settings(cfg) -> RegressSettings:
    return getattr(cfg, "regress", None) or RegressSettings()


def write_baseline(path: Path, records: list[dict], meta: dict | None = None) -> None:
    """The CSV (and its sidecar), each atomically; the CSV first, so a crash between leaves the old sidecar,
    whose cell count then no longer matches: an error on the next read, not a wrong comparison."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BASELINE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_bytes(Path(path), out.getvalue().encode())
    if meta is not None:
        atomic_write_bytes(meta_path(path), (json.dumps(meta, indent=2) + "\n").encode())


def _existing_meta(path: Path) -> dict:
    try:
        return read_meta(path, read_baseline(path))
    except BenchError:
        return {}  # no usable baseline yet: nothing to default from


def write_from_results(results: Results, baseline_path: Path, report_path: Path | None, cfg,
                       matrix: str | None = None, profile: str | None = None, seed: int | None = None) -> tuple[int, str]:
    """--write-baseline: the latest rows of every cell of the matrix become the baseline (CSV + sidecar)."""
    baseline_path = Path(baseline_path)
    old = _existing_meta(baseline_path)
    name = matrix or old.get("matrix")
    if not name:
        raise BenchError(f"--write-baseline needs --matrix (which [matrices.*] cells {baseline_path} holds); allowed: "
                         f"{', '.join(sorted(cfg.matrices))}.")
    cfg.check_choice("matrix", name, cfg.matrices)
    profile = profile or cfg.matrices[name].profile or old.get("profile") or cfg.settings.profile
    seed = seed if seed is not None else old.get("seed", cfg.settings.seed)
    expected = matrix_cells(cfg, name, profile, seed)
    current = snapshot(results, expected)
    run_it = f"`bench run --matrix {name} --profile {profile} --seed {seed}`"
    have = {cell_key(r) for r in current}
    missing = [k for k in expected if k not in have]
    if missing:
        shown = "; ".join("/".join(k[:3]) for k in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise BenchError(f"Cannot write baseline {baseline_path}: {len(missing)} of the {len(expected)} cells of matrix "
                         f"{name} (profile {profile}, seed {seed}) have no row ({shown}). Run {run_it} first.")
    unfinished = [r for r in current if r["status"] != "ok"]
    if unfinished:
        raise BenchError(f"Cannot write baseline {baseline_path}: cell {'/'.join(cell_key(unfinished[0])[:3])} is "
                         f"{unfinished[0]['status']}; a baseline holds finished cells only. Fix it and re-run {run_it}.")
    kinds = sorted({device_kind(r["device"]) for r in current})
    if len(kinds) != 1:
        raise BenchError(f"Cannot write baseline {baseline_path}: the cells of matrix {name} were measured on "
                         f"{' and '.join(kinds)}; one baseline holds one device kind. Re-run {run_it} on one device.")
    want = f"{name}-{profile}-{kinds[0]}.csv"
    if baseline_path.name != want:
        raise BenchError(f"Baseline name {baseline_path.name} does not say what it holds: one baseline per matrix, "
                         f"profile and device kind, so call it {baseline_path.with_name(want)}.")
    meta = {"format": META_FORMAT, "matrix": name, "profile": profile, "seed": int(seed), "device_kind": kinds[0],
            "devices": sorted({r["device"] for r in current}),
            "code_version": ", ".join(sorted({r["git_sha"] for r in current})), "cells": len(current),
            "matrix_definition": cfg.matrices[name].model_dump(mode="json"),
            # per minimum-norm cell: its per-sample norms and the run's best ones, for the optimality check
            "min_norm_evidence": min_norm_evidence(results, expected),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bootstrap": f"{run_it[1:-1]} && bench regress --baseline {baseline_path} --write-baseline"}
    verb = "updated" if baseline_path.is_file() else "created"
    write_baseline(baseline_path, current, meta)
    text = (f"Baseline {verb}: {baseline_path} holds the {len(current)} cells of matrix {name} (profile {profile}, "
            f"seed {seed}) measured on {', '.join(meta['devices'])} at {meta['code_version']}; sidecar "
            f"{meta_path(baseline_path)}. Check the numbers (`bench table --profile {profile}`) before committing both.\n")
    _write_report(report_path, text)
    return EXIT_OK, text
