"""Nightly regression: compare the latest results with a committed baseline (results/baselines/<profile>.csv).

A cell regresses when
- its clean or robust accuracy (minimum-norm attacks: success rate) moves by at least `min_change` AND a
  two-sided two-proportion z-test on the counts gives p < alpha (both directions: a rise in robust accuracy is
  as suspicious as a drop, since a weakened attack looks like a stronger defense);
- its mean perturbation norm (minimum-norm attacks) moves by at least `norm_rtol` relative AND a Welch z-test on
  the per-sample norms gives p < alpha (without per-sample norms, the relative threshold alone decides);
- it disappears, or it stops finishing (status other than "ok").
The test treats the two runs as independent samples. A re-run uses the same test points (same seed), so it is
conservative for small shifts; `min_change` keeps GPU rounding wobble (a few flipped points) from alarming."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchError
from .store import atomic_write_bytes
from .tables import KEY, Results, to_float, is_min_norm

BASELINE_COLUMNS = [*KEY, "cell", "norm", "eps", "status", "n", "clean_acc", "robust_acc", "n_correct", "n_robust",
                    "success_rate", "n_fooled", "mean_norm", "norm_std", "git_sha", "device", "timestamp"]
EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2


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


def snapshot(results: Results, profiles: set[str]) -> list[dict]:
    rows = [r for r in results.latest.values() if r.get("profile") in profiles]
    return [record(results, r) for r in sorted(rows, key=lambda r: tuple(str(r[k]) for k in KEY))]


def read_baseline(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"Baseline {path} not found. Create it from the current results with "
                         f"`bench regress --baseline {path} --update`.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BASELINE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchError(f"Baseline {path} is not a bench baseline: missing columns {', '.join(missing)} "
                             f"(expected {', '.join(BASELINE_COLUMNS)}; see results/baselines/README.md).")
        return list(reader)


def write_baseline(path: Path, records: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BASELINE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_bytes(Path(path), out.getvalue().encode())


@dataclass
class Finding:
    key: tuple
    kind: str  # missing | failing | drop | rise | new | fixed | still-failing | config
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
            norm_rtol: float = 0.10) -> list[Finding]:
    def keyed(recs):
        return {tuple(str(r[k]) for k in KEY): r for r in recs}
    base, cur = keyed(baseline), keyed(current)
    found: list[Finding] = []
    for key, b in base.items():
        c = cur.get(key)
        if c is None:
            found.append(Finding(key, "missing", baseline=b["status"], current="absent", regression=True))
        elif c["status"] != "ok":
            kind = "failing" if b["status"] == "ok" else "still-failing"
            found.append(Finding(key, kind, "status", b["status"], c["status"], regression=kind == "failing"))
        elif b["status"] != "ok":
            found.append(Finding(key, "fixed", "status", b["status"], c["status"]))
        else:
            found += _compare_cell(key, b, c, alpha, min_change, norm_rtol)
    found += [Finding(key, "new", current=c["status"]) for key, c in cur.items() if key not in base]
    return found


def report(findings: list[Finding], baseline_path: Path, n_cells: int, alpha: float, min_change: float,
           norm_rtol: float, current: list[dict]) -> str:
    regressions = [f for f in findings if f.regression]
    info = [f for f in findings if not f.regression]
    shas = ", ".join(sorted({r["git_sha"] for r in current})) or "-"
    verdict = (f"**{len(regressions)} regression(s)** in {n_cells} baseline cells" if regressions
               else f"**No regression** in {n_cells} baseline cells")
    lines = ["# Regression report", "",
             f"Baseline `{baseline_path}`; current results at git {shas}. A cell regresses when clean / robust "
             f"accuracy (min-norm attacks: success rate) changes by ≥ {100 * min_change:g} points with "
             f"two-proportion p < {alpha:g}, its mean norm changes by ≥ {100 * norm_rtol:g} % (Welch p < {alpha:g}), "
             f"it disappears or it stops finishing.", "", verdict, ""]
    def table(items):
        out = ["| cell | change | metric | baseline | current | p |", "|---|---|---|---|---|---|"]
        out += [f"| {f.where} | {f.kind} | {f.metric} | {f.baseline} | {f.current} | "
                f"{'' if f.p is None else f'{f.p:.2g}'} |" for f in items]
        return out + [""]
    if regressions:
        lines += ["## Regressions", "", *table(regressions)]
    if info:
        lines += ["## Other changes (not regressions)", "", *table(info)]
    return "\n".join(lines)


def run_regress(results: Results, baseline_path: Path, report_path: Path | None, profiles: list[str] | None = None,
                known_profiles=(), alpha: float = 0.05, min_change: float = 0.02, norm_rtol: float = 0.10,
                update: bool = False) -> tuple[int, str]:
    """Compare (or with `update`, accept) the latest results; returns (exit code, Markdown report)."""
    baseline_path = Path(baseline_path)
    exists = baseline_path.is_file()
    baseline = read_baseline(baseline_path) if exists or not update else []
    chosen = set(profiles or []) or {r["profile"] for r in baseline}
    if not chosen and baseline_path.stem in known_profiles:  # results/baselines/<profile>.csv
        chosen = {baseline_path.stem}
    if not chosen:
        raise BenchError(f"Cannot tell which profile {baseline_path} is for: pass --profile.")
    current = snapshot(results, chosen)
    if not current and not update:
        raise BenchError(f"No results for profile(s) {', '.join(sorted(chosen))} to compare with {baseline_path}: "
                         f"run the matrix first.")
    findings = compare(baseline, current, alpha, min_change, norm_rtol)
    text = report(findings, baseline_path, len(baseline), alpha, min_change, norm_rtol, current)
    if update:
        if not current:
            raise BenchError(f"No results for profile(s) {', '.join(sorted(chosen))}: nothing to write to {baseline_path}.")
        write_baseline(baseline_path, current)
        text += f"\nBaseline {'updated' if exists else 'created'}: {baseline_path} now holds {len(current)} cells.\n"
    if report_path is not None:
        atomic_write_bytes(Path(report_path), text.encode())
    code = EXIT_REGRESSION if any(f.regression for f in findings) and not update else EXIT_OK
    return code, text
