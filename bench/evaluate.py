"""Notebook API: attack a model you hold in memory (or name by a spec) and get typed numbers back.

    import bench
    res = bench.evaluate(model, attacks=["pgd_linf", "fgsm"], dataset="cifar10", n=1000)
    res["pgd_linf"].robust_acc, res["pgd_linf"].robust      # a float, a per-sample bool array
    res.worst_case_acc                                     # robust to every attack, per sample
    res["pgd_linf"].checks, res["pgd_linf"].verdict        # the per-cell verdicts (bench.verdicts)
    res.reliable, res.unreliable_reasons                   # is the worst case a robustness number?

The attacks are bench.toml entries at a profile (`profile`, default settings.profile) and run exactly as in a
cell (bench.runner.attack_trained, same seeded test points and batch seeds), so the numbers equal a `bench run
--model` of the same model. Nothing is written: no results row, no manifest, no checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn as nn

from .errors import BenchError


@dataclass
class AttackResult:
    """One attack's outcome on the n test points (arrays are per sample, in the order of `index`)."""

    attack: str
    kind: str  # "bounded" (robust accuracy at eps) or "min_norm" (norm needed to fool)
    norm: str
    eps: float | None
    n: int
    clean_acc: float
    robust_acc: float
    ci_low: float  # 95 % Wilson interval of robust_acc
    ci_high: float
    n_fooled: int
    correct: np.ndarray  # bool: classified correctly before the attack
    fooled: np.ndarray  # bool: correct and fooled by the attack (min_norm: at any norm)
    robust: np.ndarray  # bool: correct and not fooled (min_norm: not within eps)
    norms: np.ndarray | None  # float: perturbation norm of the returned point
    index: np.ndarray  # int: positions in the dataset's test split
    forward_passes: int
    backward_passes: int
    wall_s: float
    warnings: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)  # the per-cell verdicts (bench.verdicts), {} when off
    traits: dict = field(default_factory=dict)  # how the attack works (gradient_based, single_step, ...)
    paired_test: dict = field(default_factory=dict)  # [verdicts.audit] alpha / min_points of the checks across attacks

    @property
    def verdict(self) -> str:
        """The worst of its checks: "fail" (the number is not a robustness number), "warn", "pass" or "skip"."""
        from .verdicts import worst

        return worst(self.checks)

    def as_row(self) -> dict:
        """The scalar fields (floats, ints, strings) as one dict, e.g. for a pandas DataFrame."""
        return {k: v for k, v in vars(self).items() if not isinstance(v, (np.ndarray, list, dict)) and v is not None
                or k == "eps"}


@dataclass
class Evaluation:
    dataset: str
    profile: str
    seed: int
    n: int
    results: dict[str, AttackResult]

    def __getitem__(self, attack: str) -> AttackResult:
        return self.results[attack]

    @property
    def clean_acc(self) -> float:
        return next(iter(self.results.values())).clean_acc

    @property
    def worst_case(self) -> np.ndarray:
        """Per sample: robust to every attack with a budget (bounded ones, and min-norm ones given an eps; a
        min-norm attack without eps says nothing about robustness at a budget and is left out)."""
        rows = [r.robust for r in self.results.values() if r.kind == "bounded" or r.eps is not None]
        return np.logical_and.reduce(rows) if rows else np.zeros(0, dtype=bool)

    @property
    def worst_case_acc(self) -> float:
        wc = self.worst_case
        return float(wc.mean()) if len(wc) else float("nan")

    def rows(self) -> list[dict]:
        return [r.as_row() for r in self.results.values()]

    @property
    def cross_checks(self) -> dict[str, dict]:
        """{"Linf 8/255: black_box": check, ...}: the leaderboards' checks across the attacks of one threat model
        (a black-box or single-step attack fooling points every iterative gradient attack left robust), on the
        per-sample outcomes here (every attack ran on the same points)."""
        from .report.rows import threat_label
        from .verdicts.cross_cell import judge

        groups: dict[tuple, list] = {}
        for r in self.results.values():
            if r.kind == "bounded" and r.eps is not None and r.traits:
                groups.setdefault((r.norm, float(f"{r.eps:.6g}")), []).append(
                    (r.attack, r.traits, r.paired_test, dict(zip(r.index.tolist(), r.robust.tolist()))))
        return {f"{threat_label(tm)}: {name}": c for tm, cells in sorted(groups.items())
                for name, c in judge(cells).items()}

    @property
    def unreliable_reasons(self) -> list[str]:
        """Why the worst case is not a robustness number: each failed check of an attack that enters it, and
        each failed check across attacks; [] when it is reliable."""
        out = [f"{r.attack}: {name}: {c['reason']}" for r in self.results.values()
               if r.kind == "bounded" or r.eps is not None for name, c in r.checks.items() if c["verdict"] == "fail"]
        return out + [f"{name}: {c['reason']}" for name, c in self.cross_checks.items() if c["verdict"] == "fail"]

    @property
    def reliable(self) -> bool:
        """The worst case is a robustness number: no check failed (bench.verdicts; unreliable_reasons says which)."""
        return not self.unreliable_reasons


def _env(config, data_root, device):
    from .config import find_config
    from .runner import Env

    try:
        path = find_config(config)
    except BenchError:
        if config is not None:
            raise
        # nothing is written, so the installed checkout's bench.toml (its attack entries) is a safe fallback here
        path = Path(__file__).resolve().parent.parent / "bench.toml"
    return Env.create(config=path, data_root=data_root, device=device)


def evaluate(model: nn.Module | str, attacks: str | list[str] = "pgd_linf", dataset: str = "cifar10", n: int = 1000,
             *, weights: str | None = None, profile: str | None = None, seed: int | None = None,
             stochastic: bool = False, bpda: dict[str, str] | None = None, config=None, data_root=None,
             device: str | None = None) -> Evaluation:
    """Attack `model` (an nn.Module taking images in [0, 1] and returning logits, or a spec FILE.py:FACTORY /
    MODULE:FACTORY / robustbench:NAME with `weights`) with each attack entry of bench.toml on `n` seeded test
    points of `dataset`. `stochastic` / `bpda` declare what a class-less model cannot (see bench.user_model)."""
    from .data import TEST_SET_SIZE, dataset_info, subset_indices
    from .defense import DefenseContext
    from .runner import TrainedDefense, attack_trained
    from .stats import wilson_interval
    from .user_model import ROBUSTBENCH, ModelDefense, check_output, file_digests, threat_model_of

    env = _env(config, data_root, device)
    s = env.cfg.settings
    _, profile, seed = s.choose(None, profile, seed)
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    if not attacks:
        raise BenchError("evaluate() got no attacks: give attack entries of bench.toml, e.g. attacks=['pgd_linf'].")
    env.cfg.check_choice("dataset", dataset, env.cfg.datasets)
    env.cfg.check_choice("profile", profile, env.cfg.profiles)
    resolved = [env.cfg.attack(a, dataset, profile) for a in attacks]  # every name checked before any work
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10000:
        raise BenchError(f"n = {n!r}: the number of test points must be a whole number from 1 to 10000.")
    info = dataset_info(dataset)
    if isinstance(model, str):
        extra = {}
        if model.startswith(ROBUSTBENCH):  # the leaderboard of the attacks' norm, as `bench run --model` picks it
            extra["threat_model"] = threat_model_of(env.cfg, attacks, dataset, profile)
        params = _params(model=model, weights=str(weights or ""), stochastic=stochastic, bpda=bpda or {}, **extra)
        files = file_digests(params, Path.cwd())
    elif isinstance(model, nn.Module):
        if weights:
            raise BenchError("evaluate(): weights= goes with a model spec string; load them into your module first.")
        params = _params(model=f"<{type(model).__name__} in memory>", stochastic=stochastic, bpda=bpda or {})
        check_output(model, info, params.model)
        files = {}
    else:
        raise BenchError(f"evaluate() takes an nn.Module or a model spec string, not {type(model).__name__}.")
    d = ModelDefense(params, info)
    d.name = "evaluate"
    d.context = DefenseContext(entry_name="evaluate", cache=env.cache, data_root=env.data_root, config_root=Path.cwd())
    d.module = model if isinstance(model, nn.Module) else None
    was_training = model.training if isinstance(model, nn.Module) else False
    net = d.build_model().to(env.device).eval()
    trained = TrainedDefense(d, net, {"evaluation_only": True, "files": files}, "")
    # the test points load_subset picks (bench.data): the same for every attack, model and run at this seed
    test_index = subset_indices(TEST_SET_SIZE[dataset], n, seed, f"{dataset}/test").numpy()
    out = {}
    try:
        for name, ares in zip(attacks, resolved):
            t0 = time.time()
            part = attack_trained(env, trained, ares, dataset, profile, seed, n, label=f"{name} on the model")
            out[name] = _result(name, part, wilson_interval, time.time() - t0, env, ares, test_index)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)  # the caller's module back as it was given
    return Evaluation(dataset, profile, seed, n, out)


def _params(**kwargs):
    """ModelParams, a bad `bpda` / `stochastic` value one BenchError like bench.toml's (not a pydantic traceback)."""
    from pydantic import ValidationError

    from .user_model import ModelParams

    try:
        return ModelParams(**kwargs)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))} = {x.get('input')!r}: {x['msg']}" for x in e.errors())
        raise BenchError(f"evaluate(): {problems}.") from None


def _result(name: str, part: dict, wilson_interval, wall: float, env, ares, test_index) -> AttackResult:
    """The same numbers bench.runner.merge_parts computes for a one-shard cell."""
    from .runner import attack_traits, cell_checks, verdict_settings

    traits, audit = attack_traits(ares.cls(ares.params)), verdict_settings(env.cfg).audit

    correct = np.array(part["correct"], dtype=bool)
    n = len(correct)
    fooled = np.zeros(n, dtype=bool)
    index = np.array(part["index"], dtype=np.int64)
    fooled[index] = np.array(part["fooled"], dtype=bool)
    fooled &= correct
    norms = None
    if part["norm"]:
        norms = np.zeros(n)
        if part["norms"] is not None:
            norms[index] = np.array(part["norms"], dtype=float)
    eps = float(part["eps"]) if part["eps"] is not None else None
    if part["kind"] == "bounded":
        if norms is not None and eps is not None and (norms > eps * (1 + 1e-5) + 1e-6).any():  # as merge_parts
            raise BenchError(f"attack '{name}' exceeded its {part['norm']} budget {eps:.6g} (max {norms.max():.6g}): "
                             f"this is a bug in the attack.")
        robust = correct & ~fooled
    else:
        within = norms <= eps if (eps is not None and norms is not None) else np.zeros(n, dtype=bool)
        robust = correct & ~(fooled & within)
    n_robust = int(robust.sum())
    lo, hi = wilson_interval(n_robust, n)
    return AttackResult(attack=name, kind=part["kind"], norm=part["norm"] or "", eps=eps, n=n,
                        clean_acc=float(correct.mean()), robust_acc=n_robust / n, ci_low=float(lo), ci_high=float(hi),
                        n_fooled=int(fooled.sum()), correct=correct, fooled=fooled, robust=robust, norms=norms,
                        index=test_index, forward_passes=int(part["clean_passes"] + part["forward_passes"]),
                        backward_passes=int(part["backward_passes"]), wall_s=float(wall),
                        warnings=list(part["warnings"]),
                        checks=cell_checks(env, traits, [part]), traits=traits,
                        paired_test={"alpha": audit.alpha, "min_points": audit.min_points})
