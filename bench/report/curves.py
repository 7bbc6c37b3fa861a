"""Robustness curves (accuracy against every eps at once) and attack optimality, from the per-sample evidence of
every attack that ran on a defense.

Evidence per point and attack (the run manifests' per_sample lists):
- misclassified before any attack: minimal norm 0;
- a minimum-norm attack fooled it: the norm of the perturbation it returned (the harness measured it on the
  point it re-judged as misclassified);
- a fixed-eps attack fooled it: that perturbation's norm, which the budget check keeps <= eps (so the point's
  minimal norm is at most eps);
- a point no attack fooled: infinity. A point robust at eps under a fixed-eps attack tells nothing about its
  minimal norm beyond eps, so it never raises or lowers anything.
A point's minimal norm is the smallest over the attacks (each is an upper bound on the true minimum), so adding an
attack can only lower a point's norm and lower the curve; accuracy(eps) = the fraction of points whose minimal
norm exceeds eps, with a 95 % Wilson band at each eps.

Cells of one (dataset, profile, seed) share their test points when they use the same n_test; with different
n_test the seeded subsets nest, so points are matched by their index in the test split.

Attack optimality (AttackBench's idea, Cinà et al.): for each minimum-norm attack on a defense, with its own
curve acc_a and the best curve acc_best over all evidence, optimality = area(acc_best) / area(acc_a) over eps in
[0, the largest finite norm of the best curve and of the defense's minimum-norm attacks]: 1 when it found every
point's best norm, lower as its curve lies above the best (1 - the normalised area between the two curves). The
limit reaches past the best curve's own largest norm on purpose: when that is a fixed-eps cell's cap (a point PGD
fooled at eps), an attack whose norm for the point lies above eps, or that never fooled it, must lose area there."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import TEST_SET_SIZE, subset_indices
from ..stats import wilson_interval
from ..store import atomic_write_bytes
from .rows import NORM_NAMES, to_float
from .tables import Slice, caption, is_min_norm


@dataclass
class Evidence:
    """One attack cell's per-point upper bounds on the minimal norm, keyed by test-split index."""

    attack: str
    norm: str
    min_norm: bool  # a minimum-norm attack (its norms rank it); a fixed-eps cell only caps fooled points
    eps: float | None
    index: np.ndarray  # test-split indices of the cell's points
    norms: np.ndarray  # 0: misclassified clean; finite: an adversarial at that norm; inf: nothing known
    passes: float = 0.0  # forward + backward images through the model per point (the attack's cost)
    wall_s: float = 0.0


def point_indices(dataset: str, n: int, seed: int) -> np.ndarray:
    total = TEST_SET_SIZE.get(dataset)
    if total is None:
        return np.arange(n)
    return subset_indices(total, n, seed, f"{dataset}/test").numpy()


def evidence_of(row: dict, manifest: dict | None, dataset: str) -> Evidence | None:
    """A cell's evidence, or None when it has no per-sample norms (a noise row, a missing manifest)."""
    ps = (manifest or {}).get("per_sample") or {}
    correct, fooled, norms = ps.get("correct"), ps.get("fooled"), ps.get("norm")
    norm = row.get("norm") or ""
    if not norm or not correct or not fooled or not norms or not (len(correct) == len(fooled) == len(norms)):
        return None
    correct, fooled = np.asarray(correct, bool), np.asarray(fooled, bool)
    measured = np.asarray(norms, float)
    eps = to_float(row.get("eps"), None) if str(row.get("eps") or "") != "" else None
    out = np.full(len(correct), np.inf)
    out[~correct] = 0.0
    hit = correct & fooled
    out[hit] = measured[hit] if eps is None or is_min_norm(row) else np.minimum(measured[hit], eps)
    n_attacked = max(1, int(correct.sum()))
    passes = (to_float(row.get("forward_passes")) + to_float(row.get("backward_passes"))) / n_attacked
    return Evidence(row["attack"], norm, is_min_norm(row), eps, point_indices(dataset, len(correct), int(row["seed"])),
                    out, passes, to_float(row.get("wall_s")))


@dataclass
class Curve:
    defense: str
    norm: str
    index: np.ndarray  # the points of the curve (test-split indices)
    best: np.ndarray  # per point: the smallest norm any attack found (inf: none fooled it)
    attacks: list[Evidence] = field(default_factory=list)  # the evidence merged, on the curve's points

    @property
    def n(self) -> int:
        return len(self.index)

    def accuracy(self, eps: float, norms: np.ndarray | None = None) -> float:
        norms = self.best if norms is None else norms
        return float((norms > eps).mean()) if len(norms) else float("nan")

    def steps(self, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The step function: eps breakpoints (0 first) and the accuracy from each breakpoint on."""
        norms = self.best if norms is None else norms
        xs = np.unique(np.concatenate([[0.0], norms[np.isfinite(norms)]]))
        return xs, np.array([(norms > x).mean() for x in xs])

    def median(self) -> float:
        return float(np.median(self.best)) if self.n else float("nan")


def merge(defense: str, norm: str, evidence: list[Evidence]) -> Curve | None:
    """The curve of one defense and norm: its points are those of its largest minimum-norm cell (else of its
    largest cell); every other cell contributes on the points it shares with them."""
    evidence = [e for e in evidence if e.norm == norm]
    if not evidence:
        return None
    base = max(evidence, key=lambda e: (e.min_norm, len(e.index)))
    best = np.full(len(base.index), np.inf)
    where = {int(i): k for k, i in enumerate(base.index)}
    merged = []
    for e in evidence:
        mine, theirs = [], []
        for k, i in enumerate(e.index):
            if int(i) in where:
                mine.append(where[int(i)])
                theirs.append(k)
        on_curve = np.full(len(base.index), np.inf)
        on_curve[mine] = e.norms[theirs]
        best = np.minimum(best, on_curve)  # a point's norm only ever goes down
        merged.append(Evidence(e.attack, e.norm, e.min_norm, e.eps, base.index, on_curve, e.passes, e.wall_s))
    return Curve(defense, norm, base.index, best, merged)


def slice_curves(sl: Slice) -> dict[str, list[Curve]]:
    """Per norm, the curve of every defense with evidence, from the slice's latest finished cells."""
    per: dict[tuple[str, str], list[Evidence]] = {}
    for (defense, _), row in sorted(sl.cells.items()):
        if row.get("status") != "ok":
            continue
        e = evidence_of(row, sl.results.manifest(row), sl.dataset)
        if e is not None:
            per.setdefault((defense, e.norm), []).append(e)
    out: dict[str, list[Curve]] = {}
    for (defense, norm), evs in sorted(per.items()):
        if not any(e.min_norm for e in evs) and len({e.eps for e in evs}) < 2:
            continue  # one fixed eps is one number, not a curve
        curve = merge(defense, norm, evs)
        if curve is not None:
            out.setdefault(norm, []).append(curve)
    return out


def area(norms: np.ndarray, upto: float) -> float:
    """The integral of accuracy(eps) = P(norm > eps) over [0, upto]: the mean of min(norm, upto)."""
    return float(np.minimum(norms, upto).mean()) if len(norms) else 0.0


def area_limit(*norms: np.ndarray) -> float:
    """The largest finite norm in any of `norms` (0 when there is none): where the optimality areas stop."""
    finite = [float(a[np.isfinite(a)].max()) for a in norms if np.isfinite(a).any()]
    return max(finite, default=0.0)


def area_ratio(best: np.ndarray, norms: np.ndarray, upto: float) -> float:
    """area(best) / area(norms) over [0, upto] (1 when there is nothing to compare)."""
    if upto <= 0:
        return 1.0
    mine = area(norms, upto)
    return area(best, upto) / mine if mine > 0 else 1.0


def optimality(curve: Curve, attack: Evidence) -> float:
    """area(best curve) / area(the attack's curve) up to the largest finite norm of the best curve and of every
    minimum-norm attack on it (the same limit for each); 1 = as good as the best."""
    upto = area_limit(curve.best, *(e.norms for e in curve.attacks if e.min_norm))
    return area_ratio(curve.best, attack.norms, upto)


def curve_csv(curves: list[Curve]) -> str:
    """One row per defense and breakpoint: accuracy for eps >= that breakpoint (until the next) and its 95 % band."""
    buf = io.StringIO()
    buf.write("defense,norm,eps,accuracy,ci_low,ci_high,n,attacks\n")
    for c in curves:
        xs, acc = c.steps()
        names = "+".join(sorted(e.attack for e in c.attacks))
        for x, a in zip(xs, acc):
            lo, hi = wilson_interval(round(a * c.n), c.n)
            buf.write(f"{c.defense},{c.norm},{x:.6g},{a:.6g},{lo:.6g},{hi:.6g},{c.n},{names}\n")
    return buf.getvalue()


def attack_board(curves: list[Curve], norm: str, caption: str) -> str:
    """Markdown leaderboard of the minimum-norm attacks of one norm: per defense optimality (median norm of the
    points it fooled), then the mean optimality and the model passes per point."""
    defenses = [c.defense for c in curves]
    names = sorted({e.attack for c in curves for e in c.attacks if e.min_norm})
    if not names:
        return ""
    head = f"| attack | {' | '.join(defenses)} | mean optimality | passes / point |"
    lines = [f"## {NORM_NAMES.get(norm, norm)} — attack optimality", "",
             caption, "", head, "|" + " --- |" * (len(defenses) + 3)]
    scored = []
    for name in names:
        cells, scores, passes = [], [], []
        for c in curves:
            e = next((e for e in c.attacks if e.attack == name), None)
            if e is None:
                cells.append("—")
                continue
            o = optimality(c, e)
            scores.append(o)
            passes.append(e.passes)
            fooled = e.norms[np.isfinite(e.norms) & (e.norms > 0)]
            med = _fmt(norm, float(np.median(fooled))) if len(fooled) else "none fooled"
            cells.append(f"{o:.3f} ({med})")
        scored.append((-np.mean(scores), name, cells, np.mean(scores), np.mean(passes)))
    for _, name, cells, mean, passes in sorted(scored):
        lines.append(f"| {name} | {' | '.join(cells)} | {mean:.3f} | {passes:.0f} |")
    best = " · ".join(f"{c.defense}: median minimal norm {_fmt(norm, c.median())}" for c in curves)
    lines += ["", f"Best over all attacks: {best}."]
    return "\n".join(lines)


def norm_text(norm: str, v: float) -> str:
    """Linf norms in pixel steps (x/255, as the budgets are written), the others as numbers; ∞ for unfooled."""
    if not np.isfinite(v):
        return "∞"
    return f"{v * 255:.3g}/255" if norm == "linf" else f"{v:.4g}"


def _fmt(norm: str, v: float) -> str:
    return norm_text(norm, v) if np.isfinite(v) else "∞ (most points unfooled)"


def write_attack_board(results, dataset: str, profile: str, seed, out_dir) -> Path | None:
    """tables/attacks_DATASET_PROFILE.md: one attack leaderboard per norm; None when no minimum-norm attack ran."""
    seed = seed if seed is not None else results.default_seed(dataset, profile)
    if seed is None:
        return None
    sl = results.slice(dataset, profile, seed)
    what = ("Optimality = area under the best curve over all attacks / area under this attack's curve, up to the "
            "largest norm any attack found (1 = it found every point's smallest norm); in brackets the median norm "
            "of the points it fooled.")
    boards = [b for norm, curves in slice_curves(sl).items() if (b := attack_board(curves, norm, caption([sl], what)))]
    if not boards:
        return None
    path = Path(out_dir) / "tables" / f"attacks_{dataset}_{profile}.md"
    atomic_write_bytes(path, (f"# Attack leaderboard — {dataset} / {profile}\n\n" + "\n\n".join(boards) + "\n").encode())
    return path
