"""Plots from the results store (matplotlib, Agg backend), saved as PNG beside the tables with a Markdown page.

- eps / steps / restarts: accuracy vs that parameter for every defense, over the cells whose attack has the same
  plugin and the same parameters except the one varied (read from the manifests, so unrelated attacks never mix);
  the eps curve starts at eps 0 = clean accuracy.
- norms: for a minimum-norm attack (Boundary, HopSkipJump), the distribution of the perturbation norms of the
  fooled points and the accuracy that remains at each radius.
- curve: per norm, each defense's robustness curve from every attack's per-sample evidence (bench.report.curves),
  with its 95 % band; the curve's CSV is written beside the PNG."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI runners
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..stats import wilson_interval  # noqa: E402
from ..store import atomic_write_bytes  # noqa: E402
from .curves import Curve, curve_csv, slice_curves  # noqa: E402
from .tables import NORM_NAMES, Results, Slice, caption, is_min_norm  # noqa: E402

KINDS = ("eps", "steps", "restarts", "norms", "curve")


@dataclass
class Plot:
    title: str
    file: str


@dataclass
class Point:
    x: float
    acc: float  # percent
    low: float
    high: float
    attack: str  # the entry measured at x ("clean" for the eps-0 point)


def _entry(sl: Slice, row: dict) -> dict | None:
    m = sl.results.manifest(row)
    return (m or {}).get("attack_entry")


def sweep(sl: Slice, attack: str, vary: str) -> dict[str, list[Point]]:
    """Per defense, accuracy at each value of `vary` among the attacks that differ from `attack` only in it."""
    base = next((_entry(sl, r) for (_, a), r in sl.cells.items() if a == attack and r["status"] == "ok"), None)
    if base is None or vary not in base.get("params", {}):
        return {}
    def rest(entry):
        return entry["plugin"], {k: v for k, v in entry["params"].items() if k != vary}
    series: dict[str, dict[float, Point]] = {}
    for (defense, _), row in sorted(sl.cells.items()):
        entry = _entry(sl, row)
        if row["status"] != "ok" or is_min_norm(row) or entry is None or rest(entry) != rest(base):
            continue
        x = float(entry["params"][vary])
        points = series.setdefault(defense, {})
        if vary == "eps" and 0.0 not in points:
            n = int(float(row["n"]))
            lo, hi = wilson_interval(round(float(row["clean_acc"]) * n), n)
            points[0.0] = Point(0.0, 100 * float(row["clean_acc"]), 100 * lo, 100 * hi, "clean")
        points.setdefault(x, Point(x, 100 * float(row["robust_acc"]), 100 * float(row["ci_low"]),
                                   100 * float(row["ci_high"]), row["attack"]))
    return {d: sorted(p.values(), key=lambda q: q.x) for d, p in series.items()}


def sweep_title(series: dict[str, list[Point]], vary: str) -> str:
    entries = sorted({p.attack for pts in series.values() for p in pts} - {"clean"})
    return f"accuracy vs {vary}: {', '.join(entries)}"


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_sweep(sl: Slice, attack: str, vary: str, series: dict[str, list[Point]], path: Path) -> bool:
    # eps 0 is the clean point: a curve needs at least two attacked budgets
    if not any(len({p.x for p in pts if p.x > 0 or vary != "eps"}) >= 2 for pts in series.values()):
        return False
    norm = next(r.get("norm", "") for (_, a), r in sl.cells.items() if a == attack)
    scale = 255 if vary == "eps" and norm == "linf" else 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for defense, pts in series.items():
        y = np.array([p.acc for p in pts])
        err = np.clip([[p.acc - p.low for p in pts], [p.high - p.acc for p in pts]], 0, None)  # rounding at 0 / 100 %
        ax.errorbar([p.x * scale for p in pts], y, yerr=err, marker="o", capsize=3, label=defense)
    xs = [p.x for pts in series.values() for p in pts if p.x > 0]
    if vary != "eps" and xs and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    what = {"eps": f"eps{' × 255' if scale == 255 else ''} ({NORM_NAMES.get(norm, norm)})",
            "steps": "attack steps", "restarts": "random restarts"}[vary]
    ax.set(xlabel=what, ylabel="accuracy (%) ± 95 % CI", ylim=(0, 100),
           title=f"{sweep_title(series, vary)}\n{sl.dataset}/{sl.profile}, seed {sl.seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return True


def plot_norms(sl: Slice, attack: str, path: Path) -> bool:
    """Histogram of the fooled points' perturbation norms and accuracy vs radius, per defense."""
    data = {}
    for (defense, a), row in sorted(sl.cells.items()):
        m = sl.results.manifest(row)
        ps = (m or {}).get("per_sample") or {}
        if a != attack or row["status"] != "ok" or not is_min_norm(row) or not ps.get("norm"):
            continue
        norm, fooled, correct = np.array(ps["norm"], float), np.array(ps["fooled"], bool), np.array(ps["correct"], bool)
        data[defense] = (norm[fooled], norm, fooled, correct)
    if not data or not any(len(d[0]) for d in data.values()):
        return False
    all_norms = np.concatenate([d[0] for d in data.values()])
    edges = np.histogram_bin_edges(all_norms, bins=30)
    radii = np.linspace(0, float(all_norms.max()) * 1.05, 200)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for defense, (fooled_norms, norm, fooled, correct) in data.items():
        left.hist(fooled_norms, bins=edges, histtype="step", linewidth=1.5,
                  label=f"{defense} (mean {fooled_norms.mean():.2f}, n {len(fooled_norms)})" if len(fooled_norms) else defense)
        acc = [100 * (correct & ~(fooled & (norm <= r))).mean() for r in radii]
        right.plot(radii, acc, label=defense)
    name = NORM_NAMES.get(next(r.get("norm", "") for (_, a), r in sl.cells.items() if a == attack), "norm")
    left.set(xlabel=f"{name} norm of the adversarial perturbation (fooled points)", ylabel="points",
             title=f"{attack}: perturbation norms ({sl.dataset}/{sl.profile})")
    right.set(xlabel=f"{name} radius", ylabel="accuracy (%)", ylim=(0, 100),
              title="accuracy left at each radius (this attack)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    return True


def plot_curves(sl: Slice, norm: str, curves: list[Curve], path) -> None:
    """Accuracy against eps per defense (a step function of the points' minimal norms) with its 95 % band."""
    scale = 255 if norm == "linf" else 1
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c in curves:
        xs, acc = c.steps()
        band = np.array([wilson_interval(round(a * c.n), c.n) for a in acc])
        finite = c.best[np.isfinite(c.best)]
        end = max(float(finite.max()) * 1.1 if len(finite) else 0.0, float(xs[-1])) or 1.0
        xs_plot = np.append(xs, end) * scale
        line = ax.step(xs_plot, 100 * np.append(acc, acc[-1]), where="post", label=f"{c.defense} (n {c.n})")
        ax.fill_between(xs_plot, 100 * np.append(band[:, 0], band[-1, 0]), 100 * np.append(band[:, 1], band[-1, 1]),
                        step="post", alpha=0.2, color=line[0].get_color())
        # each fixed-eps cell's own accuracy on the curve's points: where the curve must pass at or below
        cells = [(e.eps, c.accuracy(e.eps, e.norms)) for e in c.attacks if not e.min_norm and e.eps is not None]
        if cells:
            ax.plot([x * scale for x, _ in cells], [100 * a for _, a in cells], "x", color=line[0].get_color(),
                    markersize=8, label=f"{c.defense}: fixed-eps cells")
    attacks = sorted({e.attack for c in curves for e in c.attacks})
    ax.set(xlabel=f"eps{' × 255' if scale == 255 else ''} ({NORM_NAMES.get(norm, norm)})",
           ylabel="accuracy (%), 95 % band", ylim=(0, 100),
           title=f"robustness curve, best of {', '.join(attacks)}\n{sl.dataset}/{sl.profile}, seed {sl.seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    atomic_write_bytes(path.with_suffix(".csv"), curve_csv(curves).encode())


def render_curves(sl: Slice, out_dir: Path) -> list[Plot]:
    made = []
    for norm, curves in slice_curves(sl).items():
        stem = f"curve_{norm}_{sl.dataset}_{sl.profile}_s{sl.seed}.png"
        plot_curves(sl, norm, curves, out_dir / "plots" / stem)
        made.append(Plot(f"robustness curve ({NORM_NAMES.get(norm, norm)}): best over every attack's per-sample "
                         f"evidence", f"plots/{stem}"))
    return made


def render_plots(results: Results, out_dir: Path, dataset: str, profile: str, seed=None,
                 attacks: list[str] | None = None, kinds: list[str] | None = None) -> tuple[Path | None, list[Plot], list[str]]:
    """Write PNGs to out_dir/plots/ and out_dir/plots.md; returns (page, plots made, what was skipped and why)."""
    seed = seed if seed is not None else results.default_seed(dataset, profile)
    if seed is None:
        return None, [], [f"no results for {dataset}/{profile}"]
    sl = results.slice(dataset, profile, seed)
    out_dir = Path(out_dir)
    made, seen = [], set()
    no_sweep: dict[str, list[str]] = {}
    if "curve" in (kinds or KINDS):
        curves = render_curves(sl, out_dir)
        made += curves
        if not curves:
            no_sweep["curve"] = ["every norm"]
    for attack in attacks or sl.attacks():
        if not any(a == attack for _, a in sl.cells):
            no_sweep.setdefault("results", []).append(attack)
            continue
        min_norm = any(is_min_norm(r) for (_, a), r in sl.cells.items() if a == attack)
        for kind in kinds or KINDS:
            if kind == "curve" or (kind == "norms") != min_norm:
                continue
            stem = f"{kind}_{attack}_{dataset}_{profile}_s{seed}.png"
            if kind == "norms":
                ok = plot_norms(sl, attack, out_dir / "plots" / stem)
                title = f"{attack}: perturbation-norm distribution"
            else:
                series = sweep(sl, attack, kind)
                family = frozenset((d, p.attack) for d, pts in series.items() for p in pts)
                if family and family in seen:  # the same cells, already plotted under another attack's name
                    continue
                seen.add(family)
                ok = plot_sweep(sl, attack, kind, series, out_dir / "plots" / stem)
                title = sweep_title(series, kind)
            if ok:
                made.append(Plot(title, f"plots/{stem}"))
            else:
                no_sweep.setdefault(kind, []).append(attack)
    why = {"results": f"no results for {dataset}/{profile}/seed {seed}",
           "norms": "no per-sample norms of fooled points",
           "curve": "no minimum-norm attack, nor fixed-eps cells at two budgets of one norm, with per-sample data"}
    skipped = [f"{kind}: {', '.join(names)} ({why.get(kind, f'fewer than two values of {kind} among cells that differ only in {kind}')})"
               for kind, names in no_sweep.items()]
    page = [f"# Plots — {dataset} / {profile}", caption([sl], "Accuracy curves with 95 % Wilson intervals.")]
    page += [f"## {p.title}\n\n![{p.title}]({p.file})" for p in made]
    if skipped:
        page.append("Not plotted:\n\n" + "\n".join(f"- {s}" for s in skipped))
    atomic_write_bytes(out_dir / "plots.md", ("\n\n".join(page) + "\n").encode())
    return out_dir / "plots.md", made, skipped
