"""Library API: train defenses and run (defense × attack) cells, writing rows with full provenance.

    bench.run(defense="natural", attack="pgd_linf", profile="smoke")  -> list of result rows"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import progress, provenance, verdicts
from .cpu_memory import keep_freed_memory
from .defense import DefenseContext
from .attack import AttackContext, PassCounter, perturbation_norm
from .config import Config, load_config
from .data import TEST_SET_SIZE, dataset_info, load_split, load_subset, resolve_data_root, subset_indices
from .errors import BenchError, ConfigError
from .exact import exact_fp32
from .corruptions import resolve_corruptions_root
from .external import resolve_weights_root
from .stats import wilson_interval
from .store import ArtifactCache, ResultsStore, content_hash
from .training import fit

CHECKPOINT_FORMAT = 1  # bump when a change to training code invalidates cached checkpoints


@dataclass
class Env:
    cfg: Config
    data_root: Path
    cache: ArtifactCache
    store: ResultsStore
    device: torch.device
    # the ready-made model (bench.user_model) last built in this process, by key: one build for a command's cells,
    # not one per cell; one model only, so a scheduler worker's many jobs do not pile models up on its device
    ready_made: dict = field(default_factory=dict, repr=False, compare=False)
    # where external zoo entries' checkpoints are read from (bench.external): --weights-root, BENCH_WEIGHTS, bench.toml
    weights_root: Path | None = None
    # data an attack reads for itself (bench.corruptions): --corruptions-root, BENCH_CORRUPTIONS, bench.toml
    corruptions_root: Path | None = None
    # bench run --retrain: a model zoo entry with its checkpoint missing or damaged is trained into the local cache
    # instead of stopping the run with the remedy (bench.zoo)
    retrain: bool = False

    @classmethod
    def create(cls, config=None, data_root=None, device=None, results_dir=None, weights_root=None,
               corruptions_root=None) -> "Env":
        cfg = config if isinstance(config, Config) else load_config(config)
        s = cfg.settings
        results = Path(results_dir) if results_dir else cfg.resolve_path(s.results_dir)
        cache = results / "cache" if results_dir else cfg.resolve_path(s.cache_dir)
        for path, what in ((results, "results folder"), (cache, "cache folder")):
            if path.exists() and not path.is_dir():  # never usable; found now rather than after the work
                raise BenchError(f"The {what} {path} is a file, not a folder. Point it at a folder (--results-dir, "
                                 f"or results_dir / cache_dir in {cfg.path}).")
        root = resolve_data_root(data_root, cfg.resolve_path(s.data_root))
        if root.is_file():  # found now, not as a failed download into a "folder" that is a file
            raise BenchError(f"The data root {root} is a file, not a folder. Point it at the folder holding the "
                             f"datasets: --data-root, BENCH_DATA, or data_root in {cfg.path}.")
        return cls(cfg, root, ArtifactCache(cache), ResultsStore(results),
                   provenance.resolve_device(device or s.device),
                   weights_root=resolve_weights_root(weights_root, cfg.resolve_path(s.weights_root)),
                   corruptions_root=resolve_corruptions_root(corruptions_root, cfg.resolve_path(s.corruptions_root)))

    def roots(self) -> dict:
        """The folders lent to attacks that read data of their own (Attack.inputs, AttackContext.roots)."""
        return {"corruptions": self.corruptions_root or resolve_corruptions_root(
            None, self.cfg.resolve_path(self.cfg.settings.corruptions_root))}


@dataclass
class TrainedDefense:
    defense: object
    model: torch.nn.Module
    meta: dict
    key: str


def _build_defense(env: Env, name: str, dataset: str, profile: str):
    resolved = env.cfg.defense(name, dataset, profile)
    defense = resolved.cls(resolved.params, dataset_info(dataset), env.cfg.datasets[dataset].arch)
    # artifacts a defense builds before training (e.g. the sparse front end's dictionary) go to the run's cache;
    # a ready-made model's files (bench.user_model) are relative to bench.toml
    defense.context = DefenseContext(entry_name=name, cache=env.cache, data_root=env.data_root,
                                     config_root=resolved.root, weights_root=env.weights_root)
    return resolved, defense


def checkpoint_key(resolved, dataset: str, seed: int) -> str:
    key = {"plugin": resolved.plugin, "params": resolved.params.model_dump(mode="json"), "dataset": dataset,
           "seed": seed, "format": CHECKPOINT_FORMAT}
    files = resolved.files()
    if files:  # a model read from files (bench.user_model) is its files' contents, not their names
        key["files"] = files
    return content_hash(key)


def train(defense: str, dataset: str | None = None, profile: str | None = None, seed: int | None = None,
          env: Env | None = None, **env_kwargs) -> TrainedDefense:
    """Train (or load from the content-addressed cache) one defense; returns the model in eval mode."""
    import contextlib

    keep_freed_memory()
    env = env or Env.create(**env_kwargs)
    s = env.cfg.settings
    dataset, profile, seed = s.choose(dataset, profile, seed)
    resolved, d = _build_defense(env, defense, dataset, profile)
    key = checkpoint_key(resolved, dataset, seed)
    if key in env.ready_made:  # its files' digests are in the key: a changed file is another model
        return env.ready_made[key]
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not from what ran before in this process
        torch.manual_seed(seed)
        model = d.build_model()
    if getattr(d, "evaluation_only", False):
        # a ready-made model (bench.user_model): nothing to train or cache, so no training split, no lock and no
        # checkpoint file; its key (above) holds its files' sha256
        meta = {"defense": defense, "plugin": resolved.plugin, "params": resolved.params.model_dump(mode="json"),
                "files": resolved.files(), "dataset": dataset, "seed": seed, "profile": profile,
                "evaluation_only": True, "history": [], "flags": {}, "train_seconds": 0.0,
                "git_sha": provenance.git_sha(), "versions": provenance.versions(),
                "device": provenance.device_name(env.device), "created": _now()}
        progress.log(f"[{defense}] evaluating the model as given, no training (key {key})")
        env.ready_made.clear()
        env.ready_made[key] = TrainedDefense(d, model.to(env.device).eval(), meta, key)
        return env.ready_made[key]
    from .zoo import restore_from_zoo

    restore_from_zoo(env, key, defense)  # a committed checkpoint enters the cache (verified) instead of training
    with contextlib.ExitStack() as held:
        if not env.cache.has("checkpoints", key):
            from .data import check_files
            from .store import ensure_writable_dir, file_lock

            check_files(dataset, env.data_root)
            ensure_writable_dir(env.cache.root, "cache folder")
            # one trainer per checkpoint, whichever path asks (the scheduler's training jobs take the same lock): a
            # concurrent run waits here, then loads what the first one trained
            held.enter_context(file_lock(env.cache.root / "locks" / f"checkpoints-{key}",
                                         f"[{defense}] another run is training checkpoint {key}; waiting for it"))
        if env.cache.has("checkpoints", key):
            payload, meta = env.cache.load("checkpoints", key)
            model.load_state_dict(payload["model"])
            progress.log(f"[{defense}] using cached checkpoint {key} (trained {meta.get('train_seconds', 0):.0f}s)")
            return TrainedDefense(d, model.to(env.device).eval(), meta, key)

        p = d.params
        x_all, y_all = load_split(dataset, "train", str(env.data_root))
        idx = subset_indices(len(x_all), p.n_train, seed, f"{dataset}/train")
        x_train, y_train = x_all[idx], y_all[idx]
        monitor = load_subset(dataset, "test", env.data_root, p.monitor_n, seed + 7919)
        progress.log(f"[{defense}] training on {len(x_train)} {dataset} images for {p.epochs} epochs "
                     f"(profile {profile}, seed {seed}, device {env.device})")
        t0 = time.time()
        history = fit(d, model, x_train, y_train, monitor, env.device, seed,
                      state_path=env.cache.path("checkpoints", key, ".partial.pt"))
        meta = {"defense": defense, "plugin": resolved.plugin, "params": resolved.params.model_dump(mode="json"),
                "dataset": dataset, "seed": seed, "profile": profile, "n_train": len(x_train),
                "history": history, "flags": d.training_flags(history),
                # every epoch's time, also those of an interrupted earlier process this run resumed from
                "train_seconds": sum(row.get("seconds", 0.0) for row in history),
                "wall_seconds_this_process": time.time() - t0,
                "git_sha": provenance.git_sha(), "versions": provenance.versions(),
                "device": provenance.device_name(env.device), "created": _now()}
        env.cache.save("checkpoints", key, {"model": model.state_dict()}, meta)
        env.cache.path("checkpoints", key, ".partial.pt").unlink(missing_ok=True)
        return TrainedDefense(d, model.to(env.device).eval(), meta, key)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_key(dataset, defense_resolved, attack_resolved, profile, seed, n_test, uses: dict | None = None) -> str:
    """`uses`: attack_uses' part of the key ({} for an attack that depends on no other entry)."""
    return content_hash({"dataset": dataset, "defense": defense_resolved.as_dict(), "attack": attack_resolved.as_dict(),
                         "profile": profile, "seed": seed, "n_test": n_test, **(uses or {})})


def surrogate_defenses(env: Env, ares) -> list[str]:
    """Defense entries an attack trains or loads for itself (transfer attacks name theirs in a `*surrogate*`
    parameter): their checkpoints become dependencies of the attack's cells."""
    return [v for k, v in ares.params.model_dump().items()
            if "surrogate" in k and isinstance(v, str) and env.cfg.has("defense", v)]


def attack_uses(env: Env, attack: str, dataset: str, profile: str) -> dict:
    """The part of a cell's (and a suite stage's) key for the other bench.toml entries the attack's result depends
    on: the attack entries it takes settings from (Attack.bind: a transfer attack's surrogate-side PGD) and the
    defense entries it trains for itself (its surrogate), each as resolved. Editing any of them makes the cells new,
    instead of a re-run quietly skipping them as finished with numbers the edited config would not give. Empty for
    an attack that uses no other entry, so the keys of those cells stay what they were before keys knew of this."""
    cfg, attacks = env.cfg, {}
    ares = cfg.attack(attack, dataset, profile)
    cfg.attack_instance(attack, dataset, profile, uses=attacks)
    used = {f"attack:{k}": v.as_dict() for k, v in sorted(attacks.items())}
    used.update({f"defense:{d}": cfg.defense(d, dataset, profile).as_dict() for d in surrogate_defenses(env, ares)})
    out = {"uses": used} if used else {}
    inputs = ares.cls.inputs(ares.params, dataset, env.roots())  # a BenchError here stops a run before any work
    if inputs:
        out["inputs"] = inputs
    return out


@torch.no_grad()
def predict(model, x: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def resolve_cell(env: Env, defense: str, attack: str, dataset: str, profile: str, seed: int,
                 n_test: int | None = None):
    """(defense entry, attack entry, n_test, cell key) of one cell, exactly as run_cell computes them."""
    cfg = env.cfg
    prof = cfg.profiles[profile]
    dres = cfg.defense(defense, dataset, profile)
    ares = cfg.attack(attack, dataset, profile)
    # an expensive attack may cap its test points in bench.toml (ZOO: 100 images); --n-test still wins
    n_test = n_test or getattr(ares.params, "n_test", 0) or prof.n_test
    size = TEST_SET_SIZE.get(dataset)
    if size and n_test > size:  # subset_indices would quietly take the whole test set instead (both run paths)
        raise BenchError(f"n_test = {n_test} for {defense} × {attack} is more than the {size} test images of "
                         f"{dataset}. Allowed: 1 to {size} (--n-test, or n_test in bench.toml).")
    check_backward(dres, ares)
    return dres, ares, n_test, cell_key(dataset, dres, ares, profile, seed, n_test,
                                        attack_uses(env, attack, dataset, profile))


def check_backward(dres, ares) -> None:
    """A `backward` surrogate the defense does not have stops the run here, before any training or writing (the
    attack would otherwise fail on it only when it reaches that cell)."""
    spec = getattr(ares.params, "backward", None)
    problem = dres.cls.surrogate_problem(dres.params, spec) if isinstance(spec, str) else ""
    if problem:
        raise ConfigError(f"Invalid config: [{ares.source}] backward = {spec!r} cannot attack the defense "
                          f"'{dres.name}': {problem}")


def attack_batch_size(env: Env, ares, profile: str) -> int:
    return getattr(ares.params, "batch_size", 0) or env.cfg.profiles[profile].eval_batch_size


def shard_range(n_attacked: int, batch: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Positions [lo, hi) of the attacked points that shard (i, k) owns: whole nominal batches, so every batch
    holds the same points as in the unsharded run."""
    i, k = shard
    if not 0 <= i < k:
        raise BenchError(f"shard {i} of {k} does not exist: the index must be in 0..{k - 1}.")
    n_batches = -(-n_attacked // batch)
    return min(n_attacked, i * n_batches // k * batch), min(n_attacked, (i + 1) * n_batches // k * batch)


def _batch_seed(seed: int, start: int) -> int:
    # every attack batch gets its own seed from its first position, so its result does not depend on the
    # batches before it: what lets shards of a cell run anywhere and merge into exactly the unsharded result
    return seed * 1_000_003 + 7919 + start


def attack_part(env: Env, defense: str, attack: str, dataset: str, profile: str, seed: int,
                n_test: int | None = None, *, shard: tuple[int, int] = (0, 1), batch_size: int | None = None) -> dict:
    """Attack the points of one shard of a cell and return the per-sample outcome (JSON-able, writes nothing).

    The clean verdict covers the whole seeded test subset; the correctly classified points are attacked in
    nominal batches (the attack's batch_size, else the profile's eval_batch_size) and shard (i, k) takes the
    i-th of k runs of whole batches. `batch_size` below the nominal one splits each batch further (a retry
    after running out of memory); results then differ from the nominal run only through the attack's
    randomness. Merge the parts of a cell with `merge_parts`."""
    dres, ares, n_test, cell = resolve_cell(env, defense, attack, dataset, profile, seed, n_test)
    trained = train(defense, dataset, profile, seed, env=env)
    part = attack_trained(env, trained, ares, dataset, profile, seed, n_test, shard=shard, batch_size=batch_size,
                          label=f"{attack} on {defense}")
    return {"cell": cell, "defense": defense, "attack": attack, "dataset": dataset, "profile": profile, "seed": seed,
            "n_test": n_test, **part, "checkpoint": trained.key, "training": trained.meta}


@dataclass
class Target:
    """A built defense on a cell's seeded test subset with its clean verdict: where every attack of a cell (or of
    a suite's stages) starts from."""
    trained: TrainedDefense
    x: torch.Tensor
    y: torch.Tensor
    counter: PassCounter  # counts the attacks' model passes; clean_passes of them were the clean verdict
    eval_model: torch.nn.Module  # the model whose prediction counts (an ensemble for stochastic defenses)
    correct: torch.Tensor
    clean_passes: int
    index: torch.Tensor | None = None  # positions of x in the dataset's test split


def clean_target(env: Env, trained: TrainedDefense, dataset: str, profile: str, seed: int, n_test: int) -> Target:
    """Load the cell's test subset and judge it clean. Call inside exact_fp32()."""
    d = trained.defense
    x, y = load_subset(dataset, "test", env.data_root, n_test, seed)
    index = subset_indices(TEST_SET_SIZE.get(dataset, len(x)), n_test, seed, f"{dataset}/test")  # load_subset's
    counter = PassCounter(trained.model).eval()
    eval_model = d.evaluation_model(counter) if hasattr(d, "evaluation_model") else counter
    torch.manual_seed(seed)
    clean_pred = predict(eval_model, x, env.device, env.cfg.profiles[profile].eval_batch_size)
    return Target(trained, x, y, counter, eval_model, clean_pred == y, counter.forward_images, index)


def attack_context(env: Env, target: Target, dataset: str, profile: str, seed: int, batch_size: int) -> AttackContext:
    """What an attack of this cell may know besides the model (bench.attack.AttackContext)."""
    return AttackContext(defense=target.trained.defense, device=env.device, seed=seed, batch_size=batch_size,
                         eval_model=target.eval_model, dataset=dataset, profile=profile, subset_index=target.index,
                         **harness_services(env, dataset, profile, seed))


def harness_services(env: Env, dataset: str, profile: str, seed: int) -> dict:
    """What the harness lends an attack (AttackContext's cache, test_split, surrogates, attack_entries): the
    artifact cache, the test split, and other bench.toml entries at this dataset, profile and seed, as callables,
    so an attack never reaches the environment itself."""
    return {"cache": env.cache, "test_split": lambda: load_split(dataset, "test", str(env.data_root)),
            "surrogates": lambda name: train(name, dataset, profile, seed, env=env),
            "attack_entries": lambda name: env.cfg.attack(name, dataset, profile), "roots": env.roots()}


def attack_trained(env: Env, trained: TrainedDefense, ares, dataset: str, profile: str, seed: int, n_test: int, *,
                   shard: tuple[int, int] = (0, 1), batch_size: int | None = None, label: str = "") -> dict:
    """The per-sample outcome of attack entry `ares` on a built defense (see `attack_part`): what a cell and
    bench.evaluate share, so both give the same numbers on the same points."""
    atk = ares.cls(ares.params)
    nominal = attack_batch_size(env, ares, profile)
    bs = min(batch_size or nominal, nominal)
    t0 = time.time()
    # attacks and their verdicts in exact fp32 (no TF32, no per-shape kernel choice): bench/exact.py says why
    with exact_fp32():
        target = clean_target(env, trained, dataset, profile, seed, n_test)
        counter, correct, clean_passes = target.counter, target.correct, target.clean_passes
        ctx = attack_context(env, target, dataset, profile, seed, bs)
        # a natural shift judges every point (clean errors included); an attack only the correctly classified ones
        attacked = torch.arange(len(correct)) if atk.every_point else correct.nonzero().squeeze(1)
        lo, hi = shard_range(len(attacked), nominal, shard)
        res = attack_points(env, trained, atk, counter, target.eval_model, target.x, target.y, attacked[lo:hi], bs,
                            ctx, label=label, first_position=lo)
    fooled, norms, queries, extra_out = res.fooled, res.norms, res.queries, res.extra
    return {"shard": list(shard), "batch_size": bs, "kind": atk.kind, "norm": atk.norm,
            "eps": atk.eps, "correct": correct.tolist(), "index": attacked[lo:hi].tolist(),
            "fooled": torch.cat(fooled).tolist() if fooled else [],
            "norms": torch.cat(norms).tolist() if norms else None,
            "queries": torch.cat(queries).tolist() if queries else [], "extra": extra_out,
            "clean_passes": clean_passes, "forward_passes": counter.forward_images - clean_passes,
            "backward_passes": counter.backward_images, "wall_s": time.time() - t0,
            "device": provenance.device_name(env.device), "warnings": sorted(set(ctx.warnings)), "info": ctx.info,
            "probe": res.probe, "checks_s": res.check_s,
            "architecture": getattr(trained.defense, "arch", "")}  # as resolved by this run's [datasets.D]


@dataclass
class PointsResult:
    fooled: list  # per batch: our verdict on the returned points (bool tensors)
    norms: list
    queries: list
    extra: dict
    probe: dict | None  # the verdict probes' counts (bench.verdicts.Probe.state); None when the checks are off
    check_s: float


def attack_points(env: Env, trained: TrainedDefense, atk, counter, eval_model, x, y, positions, bs: int, ctx,
                  label: str, first_position: int = 0) -> PointsResult:
    """Attack x[positions] in batches of bs (each seeded from its position, see _batch_seed), judge what the
    attack returns with our own fp32 forward of the evaluation model, and run the per-cell verdict probes.
    Call inside exact_fp32()."""
    eval_bs = env.cfg.profiles[ctx.profile].eval_batch_size if ctx.profile in env.cfg.profiles else bs
    d, model = trained.defense, trained.model
    fooled, norms, queries, extra_out = [], [], [], {}
    vs = verdict_settings(env.cfg)
    probe, check_s = verdicts.Probe(), 0.0
    with progress.bar(label, len(positions)) as advance:
        for off in range(0, len(positions), bs):
            idx = positions[off:off + bs]
            xb, yb = x[idx].to(env.device), y[idx].to(env.device)
            if vs.enabled and first_position + off == 0:
                # the model probes, once per cell (in the shard that holds its first points, whatever the batch
                # size), so a sharded cell gets the unsharded verdicts; not counted as attack passes
                t1 = time.time()
                head = positions[:vs.probe_points]
                xp, yp = x[head].to(env.device), y[head].to(env.device)
                # the gradient probe's forward is the randomness check's first pass: one forward fewer
                first = probe.gradient_probe(model, xp, yp, atk, d, vs) if atk.gradient_based else None
                probe.model_probe(model, xp, vs, first)
                check_s += time.time() - t1
            ctx.trace = {"vanishing": vs.grad_vanishing, "window_fraction": vs.incomplete_window} if vs.enabled else None
            torch.manual_seed(_batch_seed(ctx.seed, first_position + off))
            ctx.points = idx
            out = atk.run(counter, xb, yb, ctx)
            x_adv = out.x_adv.detach().cpu().float()
            if not ((x_adv >= 0) & (x_adv <= 1)).all():
                raise BenchError(f"attack '{atk.name}' produced images outside [0, 1]: this is a bug in the attack.")
            # the verdict is ours: an fp32 forward of the final adversarial examples in eval mode
            hit = predict(eval_model, x_adv, env.device, eval_bs) != y[idx]
            fooled.append(hit)
            if vs.enabled:
                t1 = time.time()
                probe.trace(ctx.trace, ~hit, vs)
                if atk.gradient_based:  # the attack said fooled, our verdict on what it returned says not
                    probe.add("silent", int((out.fooled.detach().cpu().bool() & ~hit).sum()), len(idx))
                check_s += time.time() - t1
            if atk.norm:
                norms.append(perturbation_norm(x_adv - x[idx], atk.norm))
            queries.append(out.queries.cpu().float() if out.queries is not None else torch.zeros(len(idx)))
            for k, v in out.extra.items():
                extra_out.setdefault(k, []).extend(v if isinstance(v, list) else [v])
            advance(len(idx))
    return PointsResult(fooled, norms, queries, extra_out, probe.state if vs.enabled else None, check_s)


def verdict_settings(cfg: Config) -> verdicts.VerdictSettings:
    return cfg.verdicts if cfg.verdicts is not None else verdicts.VerdictSettings()


def attack_traits(atk) -> dict:
    """What the verdicts need to know of how an attack works."""
    p = atk.params
    return {"gradient_based": atk.gradient_based, "eot": atk.eot_passes(), "loss": verdicts.attack_loss_kind(atk),
            "backward": str(getattr(p, "backward", "autograd") or "autograd"),
            # FGSM: the leaderboards' "single-step stronger than iterative" compares it with the iterative attacks
            "single_step": bool(atk.gradient_based and getattr(p, "steps", None) == 1)}


def cell_checks(env: Env, traits: dict, parts: list[dict]) -> dict:
    """The verdicts of one cell from the probe counts of all its parts ({} when the checks were off)."""
    vs = verdict_settings(env.cfg)
    if not vs.enabled or any(p.get("probe") is None for p in parts):
        return {}
    state = verdicts.merge_probes([p["probe"] for p in parts])
    return verdicts.finalize(state, vs, traits)


def merge_parts(env: Env, parts: list[dict]) -> tuple[dict, dict]:
    """The result row and manifest of a cell from the parts of all its shards (or its one unsharded part).
    Per-sample outcomes concatenate, so the merge is exact."""
    parts = sorted(parts, key=lambda p: p["shard"][0])
    first = parts[0]
    k = first["shard"][1]
    if [p["shard"] for p in parts] != [[i, k] for i in range(k)] or len({p["cell"] for p in parts}) != 1:
        raise BenchError(f"cannot merge shards {[p['shard'] for p in parts]} of cells "
                         f"{sorted({p['cell'] for p in parts})}: need shards 0..{k - 1} of one cell.")
    if any(p["correct"] != first["correct"] for p in parts):
        raise BenchError(f"the shards of cell {first['cell']} disagree on the clean predictions: the defense's "
                         f"evaluation is not deterministic across workers, so the shards cannot be merged.")
    defense, attack, dataset, profile = first["defense"], first["attack"], first["dataset"], first["profile"]
    cfg = env.cfg
    dres, ares, _, cell = resolve_cell(env, defense, attack, dataset, profile, first["seed"], first["n_test"])
    if cell != first["cell"]:
        raise BenchError(f"cell {first['cell']} was computed with another bench.toml than {cfg.path} has now "
                         f"(its key there is {cell}); run it again.")
    correct = torch.tensor(first["correct"], dtype=torch.bool)
    n = len(correct)
    fooled = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n)
    norm = next((p["norm"] for p in parts if p["norm"]), "")
    eps = next((p["eps"] for p in parts if p["eps"] is not None), None)
    norms = torch.zeros(n) if norm else None
    extra_out: dict = {}
    for p in parts:
        index = torch.tensor(p["index"], dtype=torch.long)
        fooled[index] = torch.tensor(p["fooled"], dtype=torch.bool)
        queries[index] = torch.tensor(p["queries"], dtype=torch.float)
        if norms is not None and p["norms"] is not None:
            norms[index] = torch.tensor(p["norms"], dtype=torch.float)
        for key, v in p["extra"].items():
            extra_out.setdefault(key, []).extend(v)
    traits = attack_traits(ares.cls(ares.params))
    every_point = bool(getattr(ares.cls, "every_point", False))
    if not every_point:  # a natural shift keeps its verdict on clean errors too: robust = correct after the shift
        fooled &= correct
    warnings = sorted({w for p in parts for w in p["warnings"]})
    wall = sum(p["wall_s"] for p in parts)
    trained_meta = first["training"]
    row = {"cell": cell, "dataset": dataset, "defense": defense, "attack": attack, "profile": profile,
           "seed": first["seed"], "norm": norm, "eps": _f(eps) if eps is not None else "", "status": "ok",
           "forward_passes": first["clean_passes"] + sum(p["forward_passes"] for p in parts),
           "backward_passes": sum(p["backward_passes"] for p in parts),
           "wall_s": f"{wall:.2f}", "device": "+".join(sorted({p["device"] for p in parts})),
           "git_sha": provenance.git_sha(), "versions": json.dumps(provenance.versions(), sort_keys=True),
           "config_hash": content_hash(cfg.path.read_text()), "defense_ckpt": first["checkpoint"],
           "flags": json.dumps(trained_meta.get("flags", {}), sort_keys=True),
           "warnings": " | ".join(warnings), "timestamp": _now()}
    checks = cell_checks(env, traits, parts)
    row["checks"] = verdicts.to_column(checks)
    if first["kind"] == "bounded":
        if norms is not None and eps is not None and (norms > eps * (1 + 1e-5) + 1e-6).any():
            raise BenchError(f"attack '{attack}' exceeded its {norm} budget {eps:.6g} "
                             f"(max {norms.max().item():.6g}): this is a bug in the attack.")
        robust = ~fooled if every_point else correct & ~fooled
    else:
        within = norms <= eps if eps is not None else torch.zeros_like(fooled)
        robust = correct & ~(fooled & within)
        fooled_norms = norms[fooled]
        row.update(success_rate=_f(fooled.sum().item() / max(1, correct.sum().item())),
                   mean_norm=_f(fooled_norms.mean().item()) if len(fooled_norms) else "",
                   median_norm=_f(fooled_norms.median().item()) if len(fooled_norms) else "",
                   queries=_f(queries[correct].mean().item()))
    n_robust = int(robust.sum())
    lo, hi = wilson_interval(n_robust, n)
    row.update(clean_acc=_f(correct.float().mean().item()), robust_acc=_f(n_robust / n), ci_low=_f(lo),
               ci_high=_f(hi), n=n, n_fooled=int(fooled.sum()))
    manifest = {"defense_entry": dres.as_dict(), "attack_entry": ares.as_dict(),
                "profile": cfg.profiles[profile].model_dump(),
                "config_file": provenance.portable_path(cfg.path, cfg.root),
                "data_root": provenance.portable_path(env.data_root, cfg.root), "checkpoint": first["checkpoint"],
                "architecture": first.get("architecture", ""),
                "training": {key: v for key, v in trained_meta.items() if key != "history"},
                "training_history": trained_meta.get("history", []),
                # attack-specific counters cannot be summed blindly, so a sharded cell keeps each shard's
                "attack_info": first["info"] if k == 1 else {"shards": [p["info"] for p in parts]},
                "attack_batch_size": sorted({p["batch_size"] for p in parts}),
                "checks": checks, "checks_seconds": sum(p.get("checks_s", 0.0) for p in parts),
                # what the leaderboards' cross-cell checks (black-box or single-step stronger than the gradient
                # attacks of the same threat model) need: how the attack works and the audit's paired test
                "attack_traits": traits,
                "paired_test": verdict_settings(cfg).audit.model_dump(include={"alpha", "min_points"}),
                "per_sample": {"correct": correct.tolist(), "fooled": fooled.tolist(),
                               "norm": norms.tolist() if norms is not None else None, **extra_out}}
    if k > 1:
        manifest["shards"] = k
    return row, manifest


def run_cell(env: Env, defense: str, attack: str, dataset: str, profile: str, seed: int,
             n_test: int | None = None, force: bool = False, *, batch_size: int | None = None) -> dict:
    """Train (or reuse) the defense, attack it on the seeded test subset and append one row (skipped when a
    finished row exists, unless `force`). `batch_size` caps the attack's batch (see `attack_part`)."""
    from .data import check_files
    from .store import ensure_writable_dir

    _, _, n_test, cell = resolve_cell(env, defense, attack, dataset, profile, seed, n_test)
    seen = env.store.ok_rows(cell)
    if not force and seen:
        progress.log(f"[{defense} × {attack}] finished earlier (cell {cell}); skipping (use --force to redo)")
        return seen[0]
    ensure_writable_dir(env.store.root, "results folder")  # before the work, not after the attack ran
    check_files(dataset, env.data_root)
    # one computation per cell across processes: a concurrent run of the same cell waits, then finds its row
    with env.store.cell_lock(cell, f"[{defense} × {attack}] another run is computing cell {cell}; waiting for it"):
        done = env.store.ok_rows(cell)
        if len(done) > len(seen):
            progress.log(f"[{defense} × {attack}] finished by another run meanwhile (cell {cell}); skipping")
            return done[-1]
        part = attack_part(env, defense, attack, dataset, profile, seed, n_test, batch_size=batch_size)
        row, manifest = merge_parts(env, [part])
        if not env.store.append(row, manifest):
            return env.store.ok_rows(cell)[-1]
    log_row(row)
    return row


def log_row(row: dict) -> None:
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    progress.log(f"[{row['defense']} × {row['attack']}] {row['dataset']}/{row['profile']} n={row['n']}: "
                 f"clean {float(row['clean_acc']):.2%}, robust {float(row['robust_acc']):.2%} [{lo:.2%}, {hi:.2%}] "
                 f"in {float(row['wall_s']):.1f}s")
    for w in filter(None, row["warnings"].split(" | ")):
        progress.log(f"warning: {w}")
    for w in verdicts.warnings_of(verdicts.from_column(row.get("checks", ""))):
        progress.log(f"check {w}")


def _f(v: float) -> str:
    return f"{v:.6g}"


def run(defense="natural", attack="pgd_linf", dataset=None, profile=None, seed=None, n_test=None, force=False,
        env: Env | None = None, **env_kwargs) -> list[dict]:
    """Run every (defense, attack) pair given (names or lists); returns the result rows."""
    env = env or Env.create(**env_kwargs)
    s = env.cfg.settings
    defenses = [defense] if isinstance(defense, str) else list(defense)
    attacks = [attack] if isinstance(attack, str) else list(attack)
    dataset, profile, seed = s.choose(dataset, profile, seed)
    for name in defenses:  # fail on any bad name before any work starts
        env.cfg.defense(name, dataset, profile)
    for name in attacks:
        env.cfg.attack(name, dataset, profile)
        attack_uses(env, name, dataset, profile)  # what an attack reads for itself is checked before any work
    for name in defenses:
        check_ready_made(env, name, dataset, profile, seed)
    rows = [run_cell(env, d, a, dataset, profile, seed, n_test, force) for d in defenses for a in attacks]
    return [typed_row(r) for r in rows]


def check_ready_made(env: Env, name: str, dataset: str, profile: str, seed: int, keep: bool = False) -> None:
    """Build a ready-made model (bench.user_model) once before any cell: a wrong factory, weights or output
    shape then fails before anything is written under the results folder (a trained defense is left alone).
    `keep`: the cells run in this process, which then uses this build (Env.ready_made); otherwise (the
    scheduler's workers build their own) it is built on the CPU and dropped."""
    resolved = env.cfg.defense(name, dataset, profile)
    if getattr(resolved.cls, "evaluation_only", False):
        checkpoint_key(resolved, dataset, seed)  # its files' digests: a missing file is named here
        if keep:
            train(name, dataset, profile, seed, env=env)
        else:
            _build_defense(env, name, dataset, profile)[1].build_model()


INT_COLUMNS = ("seed", "n", "n_fooled", "forward_passes", "backward_passes")
FLOAT_COLUMNS = ("eps", "clean_acc", "robust_acc", "ci_low", "ci_high", "wall_s", "success_rate", "mean_norm",
                 "median_norm", "queries")


def typed_row(row: dict) -> dict:
    """A result row with numbers as numbers (results.csv and its rows hold text): ints, floats, None for ''."""
    out = dict(row)
    for cols, kind in ((INT_COLUMNS, int), (FLOAT_COLUMNS, float)):
        for c in cols:
            v = out.get(c)
            if isinstance(v, str):
                try:
                    out[c] = None if v.strip() == "" else kind(float(v)) if kind is int else kind(v)
                except ValueError:
                    pass  # a column another tool filled with text: left as it is
    return out
