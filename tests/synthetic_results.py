"""Synthetic result rows and manifests in the exact format bench.runner writes (for report / regress tests)."""
from __future__ import annotations

import json

from bench.stats import wilson_interval
from bench.store import RESULT_COLUMNS, ResultsStore, content_hash

EPS8 = "0.0313725"


def cell(defense: str, attack: str, correct: list[bool], fooled: list[bool], *, dataset="cifar10", profile="quick",
         seed=0, norm="linf", eps=EPS8, status="ok", min_norm=False, norms=None, flags=None, warnings="",
         timestamp="2026-01-01T00:00:00+00:00", plugin=None, params=None, git_sha="abc123def456",
         wall_s=10.0, passes=(1000, 500), checks=None, traits=None) -> tuple[dict, dict]:
    """One (row, manifest) pair. Bounded: robust = correct and not fooled; min-norm: not fooled within eps (if any).
    `checks`: the per-cell verdicts ({name: check(...)}) for the row's `checks` column; None leaves it empty.
    `traits`: the manifest's attack_traits (WHITE, BLACK or SINGLE below) with the audit's default paired test;
    None writes a manifest from before them."""
    n = len(correct)
    fooled = [bool(c) and bool(f) for c, f in zip(correct, fooled)]
    within = [f and (not min_norm or (eps != "" and v <= float(eps))) for f, v in zip(fooled, norms or [0.0] * n)]
    robust = [bool(c) and not w for c, w in zip(correct, within)]
    k = sum(robust)
    lo, hi = wilson_interval(k, n)
    params = params or {"eps": float(eps) if eps else None, "steps": 10, "restarts": 1, "step_size": "eps*0.125"}
    entry = {"name": attack, "plugin": plugin or attack, "params": params}
    key = content_hash({"d": defense, "a": entry, "ds": dataset, "p": profile, "s": seed, "n": n})
    row = {c: "" for c in RESULT_COLUMNS}
    row.update(cell=key, dataset=dataset, defense=defense, attack=attack, profile=profile, seed=seed, norm=norm,
               eps=eps, status=status, n=n, n_fooled=sum(fooled), clean_acc=f"{sum(map(bool, correct)) / n:.6g}",
               robust_acc=f"{k / n:.6g}", ci_low=f"{lo:.6g}", ci_high=f"{hi:.6g}", forward_passes=passes[0],
               backward_passes=passes[1], wall_s=f"{wall_s:.2f}", device="cpu:test", git_sha=git_sha, versions="{}",
               config_hash="cfg", defense_ckpt="ckpt", flags=json.dumps(flags or {}), warnings=warnings,
               checks=json.dumps(checks, sort_keys=True) if checks else "", timestamp=timestamp)
    if min_norm:
        fooled_norms = [v for v, f in zip(norms, fooled) if f]
        row.update(success_rate=f"{sum(fooled) / max(1, sum(map(bool, correct))):.6g}",
                   mean_norm=f"{sum(fooled_norms) / len(fooled_norms):.6g}" if fooled_norms else "",
                   median_norm="", queries="100")
    if status != "ok":
        row.update(clean_acc="", robust_acc="", ci_low="", ci_high="")
    manifest = {"attack_entry": entry, "training": {"train_seconds": 12.0}, "training_history": [],
                "checks": checks or {},
                "per_sample": {"correct": [bool(c) for c in correct], "fooled": fooled, "norm": norms}}
    if traits is not None:
        manifest.update(attack_traits=traits, paired_test={"alpha": 0.05, "min_points": 0.02})
    return row, manifest


# attack_traits as bench.runner.attack_traits writes them: an iterative gradient attack, a gradient-free one, FGSM
WHITE = {"gradient_based": True, "eot": 1, "loss": "ce", "backward": "autograd", "single_step": False}
BLACK = {"gradient_based": False, "eot": 1, "loss": "ce", "backward": "autograd", "single_step": False}
SINGLE = {**WHITE, "single_step": True}


def check(verdict: str, short: str, reason: str, fraction=None, threshold=None) -> dict:
    """One entry of a row's `checks` column, as bench.verdicts writes it."""
    out = {"verdict": verdict, "short": short, "reason": reason}
    if fraction is not None:
        out["fraction"] = fraction
    if threshold is not None:
        out["threshold"] = threshold
    return out


def fooling(n: int, indices) -> list[bool]:
    chosen = set(indices)
    return [i in chosen for i in range(n)]


def write(root, cells) -> ResultsStore:
    store = ResultsStore(root)
    for row, manifest in cells:
        store.append(row, manifest)
    return store
