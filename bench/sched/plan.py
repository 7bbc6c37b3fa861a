"""The matrix as a DAG of jobs. Every node is content-addressed by its resolved config (a checkpoint by
`checkpoint_key`, a cell by `cell_key`), so a node shared by several cells is computed once, and a node whose
artifact or finished row already exists is done before the run starts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchError
from ..store import StoreError
from ..runner import Env, attack_batch_size, checkpoint_key, resolve_cell, surrogate_defenses

AUTO_SHARD_MIN_N = 2000  # `--shards auto` splits a cell over the workers only from this many test points

PENDING, RUNNING, DONE, FAILED, BLOCKED = "pending", "running", "done", "failed", "blocked"


@dataclass
class Job:
    id: str
    kind: str  # train | cell | shard | merge | suite | noop
    label: str
    spec: dict  # what a worker needs to run it (JSON-able)
    deps: list[str] = field(default_factory=list)
    row: dict | None = None  # identity of the result row a cell or merge job writes
    state: str = PENDING
    reason: str = ""
    attempts: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. a retry with a smaller batch, copied into the row
    started: float | None = None
    seconds: float | None = None
    skipped: bool = False  # finished before this run

    @property
    def writes_row(self) -> bool:
        return self.row is not None


@dataclass
class Plan:
    jobs: dict[str, Job]
    shard_dir: Path
    # finished rows per cell when the plan was made: one more later means another run computed the cell meanwhile
    finished: Counter = field(default_factory=Counter)

    def __iter__(self):
        return iter(self.jobs.values())

    def __getitem__(self, job_id: str) -> Job:
        return self.jobs[job_id]

    def ready(self) -> list[Job]:
        """Pending jobs whose dependencies are done; trainings first, because each unlocks many cells."""
        ready = [j for j in self if j.state == PENDING and all(self.jobs[d].state == DONE for d in j.deps)]
        return sorted(ready, key=lambda j: j.kind != "train")

    def dependents(self, job_id: str) -> list[Job]:
        """Every job that needs `job_id`, directly or through others (in plan order)."""
        found: set[str] = set()
        frontier = {job_id}
        while frontier:
            nxt = {j.id for j in self if j.id not in found and frontier & set(j.deps)}
            found |= nxt
            frontier = nxt
        return [j for j in self if j.id in found]

    def unfinished(self) -> bool:
        return any(j.state in (PENDING, RUNNING) for j in self)

    def cells(self) -> list[Job]:
        return [j for j in self if j.writes_row]

    def shard_path(self, job: Job) -> Path:
        i, k = job.spec["shard"]
        return self.shard_dir / job.spec["cell"] / f"{i}of{k}.json"


def _train_job(env: Env, name: str, dataset: str, profile: str, seed: int) -> Job:
    from ..zoo import ModelZoo

    resolved = env.cfg.defense(name, dataset, profile)
    key = checkpoint_key(resolved, dataset, seed)
    job = Job(f"train:{key}", "train", f"train {name} ({dataset})",
              {"kind": "train", "defense": name, "dataset": dataset, "profile": profile, "seed": seed, "key": key})
    if getattr(resolved.cls, "evaluation_only", False):  # a ready-made model: nothing to train or cache
        job.state, job.skipped, job.spec["evaluation_only"] = DONE, True, True
    elif env.cache.has("checkpoints", key):
        job.state, job.skipped = DONE, True
    elif ModelZoo.of(env.cfg).has_entry(key):  # the cell's train() copies it from the zoo (planning writes nothing)
        job.state, job.skipped, job.spec["zoo"] = DONE, True, True
    return job


def shard_count(shards: int | str, n_test: int, slots: int) -> int:
    if shards == "auto":
        return slots if slots > 1 and n_test >= AUTO_SHARD_MIN_N else 1
    return max(1, int(shards))


def build_plan(env: Env, defenses: list[str], attacks: list[str], datasets: list[str], profile: str, seed: int,
               n_test: int | None = None, shards: int | str = 1, slots: int = 1, force: bool = False,
               suites: list[str] = ()) -> Plan:
    """Cross defenses × attacks × datasets into jobs, plus one job per suite × defense × dataset; finished cells
    and cached checkpoints are marked done."""
    finished = Counter(r["cell"] for r in env.store.rows() if r["status"] == "ok")
    plan = Plan({}, env.cache.root / "shards", finished)
    jobs = plan.jobs

    def add(job: Job) -> Job:
        return jobs.setdefault(job.id, job)  # the same content key twice is one node

    for dataset in datasets:
        for defense in defenses:
            for attack in attacks:
                dres, ares, n, cell = resolve_cell(env, defense, attack, dataset, profile, seed, n_test)
                deps = [add(_train_job(env, name, dataset, profile, seed)).id
                        for name in [defense, *surrogate_defenses(env, ares)]]
                atk = env.cfg.attack_instance(attack, dataset, profile)
                spec = {"defense": defense, "attack": attack, "dataset": dataset, "profile": profile, "seed": seed,
                        "n_test": n, "cell": cell, "nominal_batch": attack_batch_size(env, ares, profile)}
                row = {"cell": cell, "dataset": dataset, "defense": defense, "attack": attack, "profile": profile,
                       "seed": seed, "norm": atk.norm, "eps": atk.eps, "defense_ckpt": deps[0].split(":", 1)[1]}
                label = f"{defense} × {attack}" + (f" ({dataset})" if len(datasets) > 1 else "")
                done = cell in finished and not force
                k = shard_count(shards, n, slots)
                if k == 1:
                    job = add(Job(f"cell:{cell}", "cell", label, {**spec, "kind": "cell", "shard": [0, 1]}, deps,
                                  row=row))
                else:
                    parts = [add(Job(f"shard:{cell}:{i}of{k}", "shard", f"{label} [{i + 1}/{k}]",
                                     {**spec, "kind": "shard", "shard": [i, k]}, deps)) for i in range(k)]
                    for part in parts:
                        if done or plan.shard_path(part).exists():
                            part.state, part.skipped = DONE, True
                    job = add(Job(f"merge:{cell}", "merge", label, {**spec, "kind": "merge", "shards": k},
                                  [p.id for p in parts], row=row))
                if done:
                    job.state, job.skipped = DONE, True
        for name in suites:
            for defense in defenses:
                _add_suite_job(env, plan, add, defense, name, dataset, profile, seed, n_test, finished, force,
                               multi=len(datasets) > 1)
    _skip_unneeded_trainings(plan)
    _verify_checkpoints(env, plan)
    return plan


def _add_suite_job(env: Env, plan: Plan, add, defense: str, name: str, dataset: str, profile: str, seed: int,
                   n_test: int | None, finished: Counter, force: bool, multi: bool) -> None:
    # one job runs the suite's stages in turn (each needs the one before it); its saved stage states make a
    # killed job resume at the stage in flight (bench.suite)
    from ..suite import plan_suite

    sp = plan_suite(env, defense, name, dataset, profile, seed, n_test)
    deps = [add(_train_job(env, d, dataset, profile, seed)).id
            for d in dict.fromkeys([defense, *(x for st in sp.stages for x in surrogate_defenses(env, st.resolved))])]
    spec = {"kind": "suite", "defense": defense, "suite": name, "dataset": dataset, "profile": profile,
            "seed": seed, "n_test": sp.n_test, "cell": sp.cell, "force": force}
    row = {"cell": sp.cell, "dataset": dataset, "defense": defense, "attack": sp.attack, "profile": profile,
           "seed": seed, "norm": sp.norm, "eps": sp.eps, "defense_ckpt": deps[0].split(":", 1)[1]}
    job = add(Job(f"suite:{sp.cell}", "suite", f"{defense} × {sp.attack}" + (f" ({dataset})" if multi else ""),
                  spec, deps, row=row))
    if sp.cell in finished and not force:
        job.state, job.skipped = DONE, True


def _verify_checkpoints(env: Env, plan: Plan) -> None:
    # a damaged cached checkpoint fails its training node once, with the file and the remedy, before any job runs:
    # its cells are then blocked with that reason instead of each failing on it in a worker
    for job in plan:
        if job.kind == "train" and job.skipped and any(d.state == PENDING and d.kind != "merge"
                                                       for d in plan.dependents(job.id)):
            if job.spec.get("evaluation_only"):
                continue
            if job.spec.get("zoo"):
                _verify_zoo_entry(env, job)
                continue
            try:
                env.cache.verify("checkpoints", job.spec["key"])
            except StoreError as e:
                job.state, job.skipped, job.reason = FAILED, False, str(e)


def _verify_zoo_entry(env: Env, job: Job) -> None:
    # a model zoo entry is committed data: one missing or damaged stops the run before anything is written, with
    # the remedy that keeps it (bench.zoo); with --retrain its checkpoint is trained into the cache instead
    from .. import progress
    from ..zoo import ModelZoo

    try:
        ModelZoo.of(env.cfg).verify(job.spec["key"])
    except StoreError as e:
        if not env.retrain:
            raise
        progress.log(f"[{job.spec['defense']}] --retrain: training checkpoint {job.spec['key']} into the cache; the "
                     f"model zoo entry is left as it is ({e})")
        job.state, job.skipped, job.spec["zoo"] = PENDING, False, False


def _skip_unneeded_trainings(plan: Plan) -> None:
    # a checkpoint whose cells all have finished rows is not trained again (e.g. after the cache was cleared)
    for job in plan:
        if job.kind == "train" and job.state == PENDING and all(d.state == DONE for d in plan.dependents(job.id)
                                                              if d.kind != "merge"):
            job.state, job.skipped = DONE, True


def parse_shards(value: str | int | None) -> int | str:
    if value in (None, ""):
        return 1
    if str(value) == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise BenchError(f"--shards {value!r}: give a whole number >= 1 or 'auto'.")
    return k
