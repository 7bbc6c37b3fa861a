"""Threat-model suites ([suites.NAME] in bench.toml): the suite's attacks run in turn on one defense, each on the
points the previous ones left robust, so the per-sample worst case costs what the survivors cost.

Every stage is content-addressed by the chain before it (the cell's defense entry, dataset, profile, seed, n_test,
then each earlier stage's resolved attack entry): a stage's per-sample outcome is written to
results/suites/<key>.json when it ends, so a run killed mid-suite resumes at the stage in flight, and a suite with
one more attack appended reuses every earlier stage. One row per stage goes to results/suite_stages.csv (points
given, fooled, time, passes); the suite's own row goes to results.csv as attack `suite:NAME`, with the per-sample
verdicts in its manifest, so the leaderboards take it as that threat model's worst case like any cell.

Why the worst case is the same as independent cells': a point's outcome under a stage must not depend on which
other points share its batch. The PGD-engine attacks draw each point's random starts from the point's own seed
(AttackContext.point_seeds) and drop fooled points one by one, so on them a suite's per-sample worst case equals
the independent cells' exactly (tests/test_suite.py). Attacks whose randomness is drawn per batch (AutoAttack's
components, the decision-based attacks, stochastic defenses) give the same worst case only in distribution."""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from dataclasses import dataclass

import torch

from . import progress, provenance, verdicts
from .data import TEST_SET_SIZE
from .errors import BenchError
from .exact import exact_fp32
from .runner import (Env, _f, _now, attack_batch_size, attack_context, attack_points, attack_traits, attack_uses,
                     check_backward, clean_target, log_row, train, verdict_settings)
from .stats import wilson_interval
from .store import atomic_write_bytes, atomic_write_json, content_hash, file_lock

PREFIX = "suite:"  # the attack column of a suite's row
STAGE_COLUMNS = ["suite_cell", "suite", "stage", "attack", "dataset", "defense", "profile", "seed", "given",
                 "fooled", "robust_after", "wall_s", "forward_passes", "backward_passes", "checks", "warnings",
                 "stage_key", "device", "git_sha", "timestamp"]


@dataclass(frozen=True)
class Stage:
    attack: str
    resolved: object  # bench.config.Resolved
    key: str  # content address of this stage's per-sample state (chained over the stages before it)


@dataclass(frozen=True)
class SuitePlan:
    name: str
    defense: str
    dataset: str
    profile: str
    seed: int
    n_test: int
    norm: str
    eps: float
    stages: tuple[Stage, ...]
    order_note: str  # how the order was chosen
    cell: str  # the suite row's cell key

    @property
    def attack(self) -> str:
        return PREFIX + self.name


def cost_per_point(env: Env, attack: str, dataset: str, profile: str) -> float | None:
    """Median model passes (forward + backward images) per attacked point over the attack's finished rows of this
    dataset and profile, any defense; None when it has none."""
    costs = []
    for r in env.store.rows():
        if (r["status"], r["attack"], r["dataset"], r["profile"]) != ("ok", attack, dataset, profile):
            continue
        try:
            attacked = float(r["n"]) * float(r["clean_acc"])
            passes = float(r["forward_passes"]) + float(r["backward_passes"]) - float(r["n"])  # less the clean pass
        except (TypeError, ValueError):
            continue
        if attacked > 0:
            costs.append(passes / attacked)
    return statistics.median(costs) if costs else None


def stage_order(env: Env, name: str, dataset: str, profile: str) -> tuple[list[str], str]:
    """The order the stages run in, and how it was chosen. "cost": attacks with a measured cost first, cheapest
    first; attacks not measured yet after them, in the written order (so appending an attack to a suite keeps the
    earlier stages, and their saved states, in place)."""
    spec = env.cfg.suites[name]
    if spec.order == "listed":
        return list(spec.attacks), "listed"
    costs = {a: cost_per_point(env, a, dataset, profile) for a in spec.attacks}
    measured = sorted((a for a in spec.attacks if costs[a] is not None), key=lambda a: costs[a])  # stable sort
    order = measured + [a for a in spec.attacks if costs[a] is None]
    return order, "by measured passes per point: " + ", ".join(
        f"{a} {costs[a]:.3g}" if costs[a] is not None else f"{a} (not measured)" for a in order)


def plan_suite(env: Env, defense: str, name: str, dataset: str, profile: str, seed: int,
               n_test: int | None = None) -> SuitePlan:
    cfg = env.cfg
    if name not in cfg.suites:
        cfg.check_choice("suite", name, cfg.suites)
    eps = cfg.suite_eps(name, dataset, profile)
    dres = cfg.defense(defense, dataset, profile)
    # every stage attacks the same seeded subset (a stage's own n_test cap, e.g. ZOO's, does not apply: the
    # worst case is over one set of points)
    n_test = n_test or cfg.profiles[profile].n_test
    size = TEST_SET_SIZE.get(dataset)
    if size and n_test > size:
        raise BenchError(f"n_test = {n_test} for {defense} × suite {name} is more than the {size} test images of "
                         f"{dataset}. Allowed: 1 to {size} (--n-test, or n_test in bench.toml).")
    order, note = stage_order(env, name, dataset, profile)
    base = content_hash({"dataset": dataset, "defense": dres.as_dict(), "profile": profile, "seed": seed,
                         "n_test": n_test})
    key, stages = base, []
    for a in order:
        res = cfg.attack(a, dataset, profile)
        check_backward(dres, res)
        # a minimum-norm stage's survivors depend on the suite's eps too (fooled = within it)
        within = {"within_eps": eps} if res.cls(res.params).kind == "min_norm" else {}
        key = content_hash({"after": key, "attack": res.as_dict(), **within, **attack_uses(env, a, dataset, profile)})
        stages.append(Stage(a, res, key))
    # the row's key names what is computed, not the order tried: a finished suite stays finished when new
    # measurements would now order it otherwise (the order changes only what a new computation reuses)
    cell = content_hash({"suite": name, "norm": cfg.suites[name].norm, "eps": eps, "cell": base,
                         "attacks": [cfg.attack(a, dataset, profile).as_dict() for a in cfg.suites[name].attacks]})
    return SuitePlan(name, defense, dataset, profile, seed, n_test, cfg.suites[name].norm, eps, tuple(stages),
                     note, cell)


def run_suite(env: Env, defense: str, name: str, dataset: str, profile: str, seed: int, n_test: int | None = None,
              force: bool = False) -> dict:
    """Run suite `name` on `defense` and append its row (skipped when a finished row exists, unless `force`:
    then every stage is recomputed too)."""
    from .data import check_files
    from .store import ensure_writable_dir

    plan = plan_suite(env, defense, name, dataset, profile, seed, n_test)
    label = f"[{defense} × {plan.attack}]"
    seen = env.store.ok_rows(plan.cell)
    if seen and not force:
        progress.log(f"{label} finished earlier (cell {plan.cell}); skipping (use --force to redo)")
        return seen[0]
    ensure_writable_dir(env.store.root, "results folder")
    check_files(dataset, env.data_root)
    with env.store.cell_lock(plan.cell, f"{label} another run is computing cell {plan.cell}; waiting for it"):
        done = env.store.ok_rows(plan.cell)
        if len(done) > len(seen):
            progress.log(f"{label} finished by another run meanwhile (cell {plan.cell}); skipping")
            return done[-1]
        row, manifest = compute(env, plan, force=force)
        if not env.store.append(row, manifest):
            return env.store.ok_rows(plan.cell)[-1]
    log_row(row)
    return row


def stage_path(env: Env, key: str):
    return env.store.root / "suites" / f"{key}.json"


STATE_KEYS = {"key", "attack", "kind", "given", "fooled", "norms", "wall_s", "forward_passes", "backward_passes",
              "checks", "warnings", "device", "git_sha", "timestamp"}


def _load_stage(env: Env, stage: Stage, given: list[int]) -> dict | None:
    path = stage_path(env, stage.key)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not run yet, or damaged by hand: the stage runs again
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        progress.log(f"[suite] stage {stage.attack}: {path} is not a stage state bench wrote; running it again")
        return None
    if state.get("key") != stage.key or state.get("given") != given or len(state.get("fooled", [])) != len(given):
        # the same chain gave other survivors: the clean verdict or an earlier stage is not deterministic here
        progress.log(f"[suite] stage {stage.attack}: its saved state ({path}) was computed on other points; "
                     f"running it again")
        return None
    return state


def compute(env: Env, plan: SuitePlan, force: bool = False) -> tuple[dict, dict]:
    """The suite's row and manifest: each stage loaded from its saved state or run on the survivors."""
    trained = train(plan.defense, plan.dataset, plan.profile, plan.seed, env=env)
    t0 = time.time()
    with exact_fp32():
        target = clean_target(env, trained, plan.dataset, plan.profile, plan.seed, plan.n_test)
    clean_s = time.time() - t0
    n = len(target.y)
    alive = target.correct.nonzero().squeeze(1)
    fooled_by = [""] * n
    norms = torch.zeros(n)
    summaries, checks, warnings = [], {}, []
    for i, stage in enumerate(plan.stages):
        given = alive.tolist()
        # one computation per stage across processes: two suites sharing a prefix (or two runs of one suite) wait
        # for each other here, and the second finds the first's state
        with file_lock(stage_path(env, stage.key),
                       f"[suite] another run is computing stage {stage.attack} ({stage.key}); waiting for it"):
            state = None if force else _load_stage(env, stage, given)
            reused = state is not None
            if state is None:
                state = _run_stage(env, plan, target, stage, alive, f"{plan.attack} [{i + 1}/{len(plan.stages)}] "
                                                                       f"{stage.attack} on {plan.defense}")
                atomic_write_json(stage_path(env, stage.key), state)
        hit = torch.tensor(state["fooled"], dtype=torch.bool)
        stage_norms = torch.tensor(state["norms"], dtype=torch.float) if state["norms"] is not None else None
        if state["kind"] == "min_norm":  # a minimum-norm attack fools a point for this suite only within eps
            hit &= stage_norms <= plan.eps
        elif stage_norms is not None and len(stage_norms) and (stage_norms > plan.eps * (1 + 1e-5) + 1e-6).any():
            raise BenchError(f"attack '{stage.attack}' exceeded the suite's {plan.norm} budget {plan.eps:.6g} (max "
                             f"{stage_norms.max().item():.6g}): this is a bug in the attack.")
        for p in alive[hit].tolist():
            fooled_by[p] = stage.attack
        if stage_norms is not None:
            norms[alive[hit]] = stage_norms[hit]
        alive = alive[~hit]
        summary = {"stage": i + 1, "attack": stage.attack, "key": stage.key, "given": len(given),
                   "fooled": int(hit.sum()), "robust_after": len(alive), "wall_s": state["wall_s"],
                   "forward_passes": state["forward_passes"], "backward_passes": state["backward_passes"],
                   "reused": reused}
        summaries.append(summary)
        checks.update({f"{stage.attack}: {k}": v for k, v in state["checks"].items()})
        warnings += [f"{stage.attack}: {w}" for w in state["warnings"]]
        if not reused or not _has_stage_row(env, stage.key):  # (a kill between the state and its row)
            _append_stage_row(env, plan, summary, state)
        progress.log(f"[{plan.defense} × {plan.attack}] stage {i + 1}/{len(plan.stages)} {stage.attack}: "
                     f"{summary['fooled']} of {len(given)} fooled{' (saved earlier)' if reused else ''}, "
                     f"{len(alive)} still robust")
    gradient = [bool(st.resolved.cls(st.resolved.params).gradient_based) for st in plan.stages]
    black_box = verdicts.suite_black_box([st.attack for st in plan.stages], gradient, summaries, n,
                                         verdict_settings(env.cfg).audit)
    if black_box:
        checks["black_box"] = black_box
    return _row(env, plan, trained, target, alive, fooled_by, norms, summaries, checks, warnings, clean_s)


def _run_stage(env: Env, plan: SuitePlan, target, stage: Stage, alive: torch.Tensor, label: str) -> dict:
    ares = stage.resolved
    atk = ares.cls(ares.params)
    bs = attack_batch_size(env, ares, plan.profile)
    counter = target.counter
    f0, b0 = counter.forward_images, counter.backward_images
    t0 = time.time()
    with exact_fp32():
        ctx = attack_context(env, target, plan.dataset, plan.profile, plan.seed, bs)
        res = attack_points(env, target.trained, atk, counter, target.eval_model, target.x, target.y, alive, bs, ctx,
                            label=label)
    checks = {}
    vs = env.cfg.verdicts
    if res.probe is not None and vs is not None and vs.enabled:
        checks = verdicts.finalize(verdicts.merge_probes([res.probe]), vs, attack_traits(atk))
    return {"key": stage.key, "attack": stage.attack, "attack_entry": ares.as_dict(), "kind": atk.kind,
            "given": alive.tolist(), "fooled": torch.cat(res.fooled).tolist() if res.fooled else [],
            "norms": torch.cat(res.norms).tolist() if res.norms else (None if not atk.norm else []),
            "queries": torch.cat(res.queries).tolist() if res.queries else [],
            "wall_s": time.time() - t0, "forward_passes": counter.forward_images - f0,
            "backward_passes": counter.backward_images - b0, "checks": checks,
            "warnings": sorted(set(ctx.warnings)), "info": ctx.info, "device": provenance.device_name(env.device),
            "git_sha": provenance.git_sha(), "timestamp": _now()}


def _has_stage_row(env: Env, key: str) -> bool:
    path = env.store.root / "suite_stages.csv"
    try:
        return any(r.get("stage_key") == key for r in csv.DictReader(io.StringIO(path.read_text())))
    except OSError:
        return False


def _append_stage_row(env: Env, plan: SuitePlan, summary: dict, state: dict) -> None:
    path = env.store.root / "suite_stages.csv"
    row = {"suite_cell": plan.cell, "suite": plan.name, "stage": summary["stage"], "attack": summary["attack"],
           "dataset": plan.dataset, "defense": plan.defense, "profile": plan.profile, "seed": plan.seed,
           "given": summary["given"], "fooled": summary["fooled"], "robust_after": summary["robust_after"],
           "wall_s": f"{summary['wall_s']:.2f}", "forward_passes": summary["forward_passes"],
           "backward_passes": summary["backward_passes"], "checks": verdicts.to_column(state["checks"]),
           "warnings": " | ".join(state["warnings"]), "stage_key": summary["key"], "device": state["device"],
           "git_sha": state["git_sha"], "timestamp": state["timestamp"]}
    with file_lock(path):  # appended by rewriting the whole file atomically, like results.csv: never torn
        old = path.read_text() if path.exists() else ""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=STAGE_COLUMNS, lineterminator="\n")
        if not old:
            writer.writeheader()
        writer.writerow(row)
        atomic_write_bytes(path, (old + out.getvalue()).encode())


def _row(env: Env, plan: SuitePlan, trained, target, alive, fooled_by, norms, summaries, checks, warnings,
         clean_s: float) -> tuple[dict, dict]:
    cfg = env.cfg
    correct = target.correct
    n = len(correct)
    robust = torch.zeros(n, dtype=torch.bool)
    robust[alive] = True
    fooled = correct & ~robust
    n_robust = int(robust.sum())
    lo, hi = wilson_interval(n_robust, n)
    row = {"cell": plan.cell, "dataset": plan.dataset, "defense": plan.defense, "attack": plan.attack,
           "profile": plan.profile, "seed": plan.seed, "norm": plan.norm, "eps": _f(plan.eps), "status": "ok",
           "clean_acc": _f(correct.float().mean().item()), "robust_acc": _f(n_robust / n), "ci_low": _f(lo),
           "ci_high": _f(hi), "n": n, "n_fooled": int(fooled.sum()),
           "forward_passes": target.clean_passes + sum(s["forward_passes"] for s in summaries),
           "backward_passes": sum(s["backward_passes"] for s in summaries),
           "wall_s": f"{clean_s + sum(s['wall_s'] for s in summaries):.2f}",
           "device": provenance.device_name(env.device), "git_sha": provenance.git_sha(),
           "versions": json.dumps(provenance.versions(), sort_keys=True),
           "config_hash": content_hash(cfg.path.read_text()), "defense_ckpt": trained.key,
           "flags": json.dumps(trained.meta.get("flags", {}), sort_keys=True),
           "warnings": " | ".join(sorted(set(warnings))), "checks": verdicts.to_column(checks),
           "timestamp": _now()}
    manifest = {"defense_entry": cfg.defense(plan.defense, plan.dataset, plan.profile).as_dict(),
                "suite": {"name": plan.name, "norm": plan.norm, "eps": plan.eps, "order": plan.order_note,
                          "entry": cfg.suites[plan.name].model_dump(), "stages": summaries},
                "profile": cfg.profiles[plan.profile].model_dump(),
                "config_file": provenance.portable_path(cfg.path, cfg.root),
                "data_root": provenance.portable_path(env.data_root, cfg.root), "checkpoint": trained.key,
                "architecture": getattr(trained.defense, "arch", ""),
                "training": {k: v for k, v in trained.meta.items() if k != "history"},
                "checks": checks,
                "per_sample": {"correct": correct.tolist(), "fooled": fooled.tolist(),
                               "norm": [float(v) if f else 0.0 for v, f in zip(norms.tolist(), fooled.tolist())],
                               "fooled_by": fooled_by}}
    return row, manifest
