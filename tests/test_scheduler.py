"""The matrix scheduler (bench.sched): plan/DAG, failure handling, resume after kill -9, exact sharding, Ray.

The slow tests run a 3 × 3 matrix of tiny natural-plug-in defenses (MNIST CNN, a few hundred images, one
epoch) × pgd_linf / fgsm / bim on 20 test images, defined in a temporary config, never in bench.toml."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import Defense, register_attack, register_defense
from bench.runner import Env, attack_part, merge_parts, run_cell, shard_range
from bench.sched import build_plan, run_matrix
from bench.sched.core import Scheduler
from bench.sched.jobs import Event
from bench.sched.local import PARENT_ENV
from bench.sched.view import PlainView
from bench.store import ResultsStore

from attacks.pgd import FGSM
from conftest import tiny_natural

REPO = Path(__file__).resolve().parent.parent
TINY = ("\n" + tiny_natural("tiny_a") + tiny_natural("tiny_b", 200, 20) + tiny_natural("tiny_c", 400, 50, "2e-3")
        # the same recipe as tiny_a under another name: one checkpoint serves both
        + tiny_natural("tiny_a_again") + """[attacks.pgd_l2_b3]
# small batches, so a few dozen attacked points make several batches to shard
plugin = "pgd_l2"
eps = 2.0
steps = 5
step_size = "eps/4"
batch_size = 3

[matrices.tiny3x3]
datasets = ["mnist"]
defenses = ["tiny_a", "tiny_b", "tiny_c"]
attacks = ["pgd_linf", "fgsm", "bim"]
""")
PLANTED = """
[defenses.planted_raise]
plugin = "planted_raise"
epochs = 1
n_train = 100
[defenses.planted_crash]
plugin = "planted_crash"
epochs = 1
n_train = 100
[attacks.planted_oom]
plugin = "planted_oom"
eps = 0.3
batch_size = 8
"""
N_TEST = 20


# ------------------------------------------------------------------ planted plug-ins (this module only)
# Worker processes import this module too (bench.sched.jobs.extra_plugin_modules), so they know them.

@register_defense("planted_raise")
class PlantedRaise(Defense):
    """Test only: training raises."""

    def batch_loss(self, model, x, y):
        raise RuntimeError("planted failure in training")


@register_defense("planted_crash")
class PlantedCrash(Defense):
    """Test only: training kills its worker process."""

    def batch_loss(self, model, x, y):
        os._exit(7)


@register_attack("planted_oom")
class PlantedOOM(FGSM):
    """Test only: FGSM that runs out of memory on batches of more than 4 points."""

    def run(self, model, x, y, ctx):
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (planted): tried to allocate 1 TiB")
        return super().run(model, x, y, ctx)


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sched") / "bench.toml"
    path.write_text((REPO / "bench.toml").read_text() + "\n" + TINY)
    return path


@pytest.fixture(scope="module")
def planted_config(tiny_config) -> Path:
    """The tiny config plus entries of the planted plug-ins (usable in this process and its workers only)."""
    path = tiny_config.with_name("planted.toml")
    path.write_text(tiny_config.read_text() + PLANTED)
    return path


def make_env(config: Path, data_root: Path, results: Path) -> Env:
    return Env.create(config=config, data_root=data_root, device="cpu", results_dir=results)


def rows_of(results: Path) -> list[dict]:
    return ResultsStore(results).rows()


def per_sample(results: Path, cell: str) -> dict:
    return json.loads((results / "runs" / f"{cell}.json").read_text())["per_sample"]


def checkpoints(results: Path) -> list[str]:
    """Finished checkpoints: not the `<key>.partial.pt` resume state of a training still under way."""
    found = (results / "cache" / "checkpoints").glob("*.pt")
    return sorted(p.name for p in found if not p.name.endswith(".partial.pt"))


def bench_cli(*args, **kwargs):
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=env, **kwargs)


def orphans_of(pid: int) -> list[int]:
    """Processes still running with the scheduler `pid` as their owner (workers outliving their parent)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"{PARENT_ENV}={pid}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


COMPARED = ("cell", "dataset", "defense", "attack", "status", "clean_acc", "robust_acc", "ci_low", "ci_high", "n",
            "n_fooled", "forward_passes", "backward_passes", "defense_ckpt", "norm", "eps")


# ------------------------------------------------------------------ fast: the plan and the scheduler's decisions

def test_plan_is_content_addressed_and_skips_finished_work(tiny_config, data_root, tmp_path):
    env = make_env(tiny_config, data_root, tmp_path)
    plan = build_plan(env, ["tiny_a", "tiny_a_again", "tiny_b"], ["fgsm", "bim"], ["mnist"], "smoke", 0, N_TEST)
    trains = [j for j in plan if j.kind == "train"]
    cells = plan.cells()
    assert len(trains) == 2 and len(cells) == 6  # tiny_a and tiny_a_again share one checkpoint node
    assert {j.deps[0] for j in cells if j.row["defense"] != "tiny_b"} == {trains[0].id}
    assert all(j.state == "pending" for j in plan)

    # a finished row and a cached checkpoint are done before the run starts
    done = cells[0]
    ResultsStore(tmp_path).append({"cell": done.row["cell"], "status": "ok"}, {})
    env.cache.save("checkpoints", trains[1].spec["key"], {"model": {}}, {})  # a whole entry: it verifies
    again = build_plan(env, ["tiny_a", "tiny_a_again", "tiny_b"], ["fgsm", "bim"], ["mnist"], "smoke", 0, N_TEST)
    assert again[done.id].skipped and again[trains[1].id].skipped
    assert sum(j.skipped for j in again.cells()) == 1
    forced = build_plan(env, ["tiny_a"], ["fgsm"], ["mnist"], "smoke", 0, N_TEST, force=True)
    assert not any(j.skipped for j in forced.cells())

    sharded = build_plan(env, ["tiny_b"], ["bim"], ["mnist"], "smoke", 0, N_TEST, shards=3)
    (merge,) = sharded.cells()
    assert merge.kind == "merge" and [sharded[d].spec["shard"] for d in merge.deps] == [[0, 3], [1, 3], [2, 3]]


def test_shard_ranges_tile_the_attacked_points_in_whole_batches():
    for n in range(0, 23):
        for batch in (1, 3, 5):
            for k in (1, 2, 4, 7):
                ranges = [shard_range(n, batch, (i, k)) for i in range(k)]
                assert ranges[0][0] == 0 and ranges[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
                assert all(lo % batch == 0 and lo <= hi for lo, hi in ranges)


class FakeBackend:
    """Runs nothing: trainings of tiny_b fail, attack jobs run out of memory; records what was submitted."""

    name, slots, started = "fake", 2, True

    def __init__(self):
        self.inflight, self.submitted = [], []

    def free_slots(self):
        return self.slots - len(self.inflight)

    def submit(self, job_id, spec, label=""):
        self.inflight.append((job_id, spec))
        self.submitted.append((job_id, dict(spec)))

    def poll(self, timeout):
        out = []
        for job_id, spec in self.inflight:
            if spec["kind"] == "train":
                ok = spec["defense"] != "tiny_b"
                out.append(Event(job_id, ok, {"checkpoint": spec["key"]}, "" if ok else "BoomError: planted"))
            else:
                out.append(Event(job_id, False, error="CUDA out of memory", retryable=True))
        self.inflight = []
        return out

    def running(self):
        return []

    def stop(self):
        pass


def test_failures_block_dependents_and_oom_retries_once_with_half_the_batch(tiny_config, data_root, tmp_path):
    env = make_env(tiny_config, data_root, tmp_path)
    plan = build_plan(env, ["tiny_a", "tiny_b"], ["fgsm", "bim"], ["mnist"], "smoke", 0, N_TEST)
    backend = FakeBackend()
    summary = Scheduler(env, plan, backend, PlainView()).run()
    rows = {(r["defense"], r["attack"]): r for r in rows_of(tmp_path)}
    assert len(rows) == 4 and summary.failed == 2 and summary.blocked == 2 and summary.ok == 0
    for attack in ("fgsm", "bim"):
        assert rows["tiny_b", attack]["status"] == "blocked"
        assert "train tiny_b (mnist) failed: BoomError: planted" in rows["tiny_b", attack]["warnings"]
        failed = rows["tiny_a", attack]
        assert failed["status"] == "failed" and "retried with attack batch size 100" in failed["warnings"]
        tries = [spec for job, spec in backend.submitted if spec.get("attack") == attack and spec["defense"] == "tiny_a"]
        assert [t.get("batch_size") for t in tries] == [None, 100]  # nominal 200 (eval_batch_size), then half
    # a later success replaces the failed row of the same cell
    cell = rows["tiny_a", "fgsm"]["cell"]
    ResultsStore(tmp_path).append({**rows["tiny_a", "fgsm"], "status": "ok", "warnings": ""}, {})
    assert [r["status"] for r in rows_of(tmp_path) if r["cell"] == cell] == ["ok"]


# ------------------------------------------------------------------ slow: real runs

@pytest.fixture(scope="module")
def killed_run(tiny_config, data_root, tmp_path_factory):
    """The tiny 3 × 3 matrix through the CLI on two CPU workers (one thread each, like the Ray tasks of the Ray
    test: CPU results are bitwise reproducible only at equal thread counts), killed with SIGKILL after its first
    finished row, then run again to the end. Returns what was seen at the kill and the results folder."""
    results = tmp_path_factory.mktemp("killed") / "results"
    args = ["run", "--matrix", "tiny3x3", "--config", str(tiny_config), "--data-root", str(data_root),
            "--results-dir", str(results), "--n-test", str(N_TEST), "--devices", "cpu,cpu", "--plain"]
    proc = bench_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(r["status"] == "ok" for r in rows_of(results)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = {"rows": rows_of(results), "checkpoints": checkpoints(results), "code": proc.returncode}
    time.sleep(1.0)
    at_kill["orphans"] = orphans_of(proc.pid)
    done = bench_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    at_kill["rerun_log"] = done.communicate(timeout=600)[0]
    at_kill["rerun_code"] = done.returncode
    return at_kill, results


@pytest.mark.slow
@pytest.mark.ci
def test_matrix_resumes_after_kill_with_every_cell_once(killed_run):
    at_kill, results = killed_run
    assert at_kill["code"] == -signal.SIGKILL and 1 <= len(at_kill["rows"]) < 9, "the kill should land mid-way"
    assert at_kill["orphans"] == [], "workers must die with their parent"
    assert at_kill["rerun_code"] == 0, at_kill["rerun_log"]
    finished_before = len(at_kill["rows"])
    trainings_left = 3 - len(at_kill["checkpoints"])  # a training still running at the kill is redone, nothing else
    assert f"9 cells ({finished_before} finished earlier), {trainings_left} trainings" in at_kill["rerun_log"]
    rows = rows_of(results)
    assert len(rows) == 9 and len({r["cell"] for r in rows}) == 9
    assert {(r["defense"], r["attack"]) for r in rows} == {(d, a) for d in ("tiny_a", "tiny_b", "tiny_c")
                                                           for a in ("pgd_linf", "fgsm", "bim")}
    assert all(r["status"] == "ok" and int(r["n"]) == N_TEST for r in rows)
    assert rows[:finished_before] == at_kill["rows"]  # nothing finished was lost or rewritten
    assert set(at_kill["checkpoints"]) <= set(checkpoints(results)) and len(checkpoints(results)) == 3  # no duplicates
    assert not list((results / "cache").rglob("*.partial.pt"))
    assert (results / "leaderboard.md").exists()


@pytest.mark.slow
@pytest.mark.ci
def test_failing_defenses_block_only_their_own_cells_and_shards_merge_exactly(killed_run, planted_config, data_root,
                                                                               tmp_path):
    _, unsharded = killed_run
    results = tmp_path / "results"
    shutil.copytree(unsharded / "cache" / "checkpoints", results / "cache" / "checkpoints")
    env = make_env(planted_config, data_root, results)
    summary = run_matrix(env, ["tiny_a", "planted_raise", "planted_crash", "tiny_b"], ["pgd_linf", "planted_oom"],
                         ["mnist"], "smoke", 0, N_TEST, devices="cpu,cpu", shards=2, plain=True)
    rows = {(r["defense"], r["attack"]): r for r in rows_of(results)}
    assert len(rows) == 8 and (summary.ok, summary.blocked, summary.failed) == (4, 4, 0)
    for attack in ("pgd_linf", "planted_oom"):
        raised, crashed = rows["planted_raise", attack], rows["planted_crash", attack]
        assert raised["status"] == "blocked" and "RuntimeError: planted failure in training" in raised["warnings"]
        assert "retried" not in raised["warnings"]  # an ordinary error is not retried
        assert crashed["status"] == "blocked" and "crashed (exit code 7)" in crashed["warnings"]
        for defense in ("tiny_a", "tiny_b"):
            assert rows[defense, attack]["status"] == "ok"
    for defense in ("tiny_a", "tiny_b"):  # out of memory at batch 8: retried once at batch 4, then fine
        assert "retried with attack batch size 4" in rows[defense, "planted_oom"]["warnings"]
    # the sharded pgd_linf cells equal the unsharded ones of the killed-and-resumed run, sample by sample
    before = {(r["defense"], r["attack"]): r for r in rows_of(unsharded)}
    for defense in ("tiny_a", "tiny_b"):
        a, b = rows[defense, "pgd_linf"], before[defense, "pgd_linf"]
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
        assert per_sample(results, a["cell"]) == per_sample(unsharded, b["cell"])
    assert not (results / "cache" / "shards").exists() or not any((results / "cache" / "shards").iterdir())


@pytest.mark.slow
def test_shards_of_a_cell_merge_into_the_unsharded_result(tiny_config, data_root, tmp_path):
    """In-process: 4 shards of pgd_l2 (random start, per-sample L2 norms) in batches of 3 equal one run."""
    env = make_env(tiny_config, data_root, tmp_path)
    row = run_cell(env, "tiny_c", "pgd_l2_b3", "mnist", "smoke", 0, 60)
    assert int(row["n"]) == 60 and float(row["clean_acc"]) * 60 >= 9, "need several batches of attacked points"
    parts = [attack_part(env, "tiny_c", "pgd_l2_b3", "mnist", "smoke", 0, 60, shard=(i, 4)) for i in (2, 0, 3, 1)]
    assert all(p["index"] for p in parts)
    merged, manifest = merge_parts(env, parts)
    assert {k: merged[k] for k in COMPARED} == {k: row[k] for k in COMPARED}
    assert manifest["per_sample"] == per_sample(tmp_path, row["cell"])
    assert any(n not in (0.0, 2.0) for n in manifest["per_sample"]["norm"])  # the norms really fingerprint x_adv


@pytest.mark.slow
@pytest.mark.ci
def test_ray_backend_gives_the_local_results(killed_run, tiny_config, data_root, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'bench[ray]')")
    _, local = killed_run
    results = tmp_path / "results"
    env = make_env(tiny_config, data_root, results)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_matrix(env, ["tiny_a", "tiny_b", "tiny_c"], ["pgd_linf", "fgsm", "bim"], ["mnist"], "smoke", 0,
                             N_TEST, backend="ray", plain=True)
    finally:
        ray.shutdown()
    assert summary.ok == 9 and not summary.problems
    ours = {r["cell"]: r for r in rows_of(results)}
    theirs = {r["cell"]: r for r in rows_of(local)}
    assert ours.keys() == theirs.keys()
    for cell, r in ours.items():
        assert {k: r[k] for k in COMPARED} == {k: theirs[cell][k] for k in COMPARED}
        assert per_sample(results, cell) == per_sample(local, cell)
    assert checkpoints(results) == checkpoints(local)  # trained in Ray tasks: the same content keys


@pytest.mark.slow
@pytest.mark.ci
def test_concurrent_matrix_runs_compute_each_cell_once(tiny_config, data_root, tmp_path):
    """Two `bench run` of the same three cells on the scheduler at once: the parents take each cell's
    store.cell_lock before its job runs and hold it until the row is written, so no cell is computed twice
    (before, both computed all three and the store dropped the second row of each). The test holds the first
    cell's lock until both runs wait for it, so the two runs surely overlap on it."""
    import threading

    from bench.runner import resolve_cell

    results = tmp_path / "results"
    attacks = ["pgd_linf", "fgsm", "bim"]
    env = make_env(tiny_config, data_root, results)
    cells = {a: resolve_cell(env, "tiny_a", a, "mnist", "smoke", 0, N_TEST)[3] for a in attacks}
    args = ["run", "-d", "tiny_a", *[x for a in attacks for x in ("-a", a)], "--dataset", "mnist",
            "--n-test", str(N_TEST), "--devices", "cpu", "--plain", "--config", str(tiny_config),
            "--data-root", str(data_root), "--results-dir", str(results)]
    first = cells["pgd_linf"]
    with ResultsStore(results).cell_lock(first):
        procs = [bench_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        lines = [[], []]
        readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout), daemon=True)
                   for p, out in zip(procs, lines)]
        for t in readers:
            t.start()
        deadline = time.time() + 300
        while not all(any(f"computing cell {first}; waiting for it" in line for line in out) for out in lines):
            assert time.time() < deadline and all(p.poll() is None for p in procs), lines
            time.sleep(0.2)
    for p, t in zip(procs, readers):
        p.wait(timeout=300)
        t.join(timeout=10)
    outs = ["".join(out) for out in lines]
    assert all(p.returncode == 0 for p in procs), outs
    rows = rows_of(results)
    assert sorted(r["cell"] for r in rows) == sorted(cells.values()) and all(r["status"] == "ok" for r in rows)
    for attack in attacks:  # the line each computed cell logs when its row is written
        assert sum(out.count(f"[tiny_a × {attack}] mnist/smoke n={N_TEST}: clean") for out in outs) == 1, outs
    assert sum(out.count(f"finished by another run meanwhile (cell {first})") for out in outs) == 1, outs
    assert not any("its row in" in out for out in outs), outs  # the store never had to drop a duplicate
    assert sum(out.count("[tiny_a] training on") for out in outs) == 1, outs


# ------------------------------------------------------------------ kill -9 battery

KILL = """
[defenses.kill_a]
# three epochs: kills between epochs, and one between the last epoch and the checkpoint's save
plugin = "natural"
epochs = 3
n_train = 300
batch_size = 30
optimizer = "adam"
lr = 1e-3
weight_decay = 0.0
schedule = "constant"
augment = "none"
monitor_n = 20
[defenses.kill_b]
plugin = "natural"
epochs = 2
n_train = 200
batch_size = 20
optimizer = "adam"
lr = 1e-3
weight_decay = 0.0
schedule = "constant"
augment = "none"
monitor_n = 20
# batches of 4 points: a kill can land between two batches of an attack
[attacks.fgsm_b4]
plugin = "fgsm"
eps = 0.3
batch_size = 4
[attacks.pgd_b4]
plugin = "pgd_linf"
eps = 0.3
steps = 5
step_size = "eps/4"
restarts = 1
batch_size = 4
"""
HOOK = REPO / "tests" / "pause_hook"  # sitecustomize: BENCH_TEST_PAUSE stops a process at an exact moment
CKPT = r"checkpoints/[0-9a-f]{16}\.pt$"  # a finished checkpoint (not <key>.partial.pt)
# (command, where it stops (tests/pause_hook/sitecustomize.py), finished rows then, a line of its log)
KILLS = [
    ("one", r"write partial\.pt$ 1", 0, "[kill_a] training on"),  # epoch 1's resume state not yet renamed
    ("one", r"write partial\.pt$ 2", 0, "[kill_a] training on"),  # epoch 1 saved, epoch 2 not
    ("one", f"write {CKPT} 1", 0, "resuming training of natural at epoch 2/3"),  # trained, checkpoint not renamed
    ("one", "call bench.runner.predict 3", 0, "resuming training of natural at epoch 4/3"),  # attack: 2 of its batches
    ("one", r"write results\.csv$ 1", 0, "using cached checkpoint"),  # row computed, manifest written, csv not
    ("matrix", r"write partial\.pt$ 1", 0, "1 trainings and 4 attack jobs"),  # kill_b trains in the worker
    ("matrix", r"write results\.csv$ 2", 1, "[kill_b] training on"),  # first row written, the second not
    ("matrix", "call bench.runner.predict 3", 1, "0 trainings and 3 attack jobs"),  # the worker mid-attack
    ("matrix", r"write runs/[0-9a-f]{16}\.json$ 2", 2, "0 trainings and 3 attack jobs"),  # manifest before its row
    ("matrix", r"write leaderboard\.md$ 1", 4, "0 trainings and 2 attack jobs"),  # every row written, table not
]


def _battery_env(pause: str | None = None) -> dict:
    env = {**os.environ, "BENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1",  # bitwise results need equal thread counts
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))}
    env.pop("BENCH_TEST_PAUSE", None)
    if pause:
        env["BENCH_TEST_PAUSE"] = pause
    return env


def _until_paused(args: list[str], pause: str) -> tuple[subprocess.Popen, str]:
    """Start `bench` with the pause hook armed; returns once it (or one of its workers) prints PAUSED."""
    import queue
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_battery_env(pause))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and None, daemon=True).start()
    seen, deadline = [], time.time() + 300
    while not (seen and seen[-1].startswith("PAUSED")):
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.time())))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"never paused at {pause!r}:\n{''.join(seen)}")
        assert proc.poll() is None or not lines.empty(), f"exited before {pause!r}:\n{''.join(seen)}"
    return proc, "".join(seen)


def _no_orphans(pid: int) -> bool:
    deadline = time.time() + 10
    while orphans_of(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not orphans_of(pid)


@pytest.mark.slow
@pytest.mark.ci
def test_kill_battery_loses_and_duplicates_nothing(tiny_config, data_root, tmp_path):
    """kill -9 at ten exact moments (training, saving a checkpoint, attacking, writing a manifest, a row, the
    leaderboard) of one cell run in-process and of a 2 × 2 matrix on the scheduler, each followed by the next run
    of the same results folder; at the end every cell exactly once and, cell by cell and sample by sample, the
    results and checkpoints of an uninterrupted reference run (training resumes bitwise, attacks are seeded)."""
    config = tmp_path / "bench.toml"
    config.write_text(tiny_config.read_text() + KILL)
    common = ["--dataset", "mnist", "--n-test", str(N_TEST), "--config", str(config), "--data-root", str(data_root)]
    commands = {"one": ["run", "-d", "kill_a", "-a", "fgsm_b4", *common],
                "matrix": ["run", "-d", "kill_a", "-d", "kill_b", "-a", "fgsm_b4", "-a", "pgd_b4", *common,
                           "--devices", "cpu", "--plain"]}
    reference, results = tmp_path / "reference", tmp_path / "results"
    ref = subprocess.Popen([sys.executable, "-m", "bench.cli", *commands["matrix"], "--results-dir", str(reference)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_battery_env())
    before: list[dict] = []
    for i, (command, pause, n_rows, logged) in enumerate(KILLS, start=1):
        proc, out = _until_paused([*commands[command], "--results-dir", str(results)], pause)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        where = f"kill {i} ({command}, {pause}):\n{out}"
        assert proc.returncode == -signal.SIGKILL and _no_orphans(proc.pid), where
        assert logged in out, where
        rows = rows_of(results)
        assert not list(results.glob("results.csv.corrupt-*")), where  # every row parses: none torn
        assert rows[:len(before)] == before and len(rows) == n_rows, where  # nothing lost or rewritten
        assert len({r["cell"] for r in rows}) == len(rows) and all(r["status"] == "ok" for r in rows), where
        before = rows
    final = subprocess.run([sys.executable, "-m", "bench.cli", *commands["matrix"], "--results-dir", str(results)],
                           capture_output=True, text=True, env=_battery_env(), timeout=300)
    assert final.returncode == 0 and "4 cells (4 finished earlier), 0 trainings" in final.stderr, final.stderr
    ref_out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, ref_out

    rows, theirs = rows_of(results), {r["cell"]: r for r in rows_of(reference)}
    assert rows == before and len(theirs) == 4 and sorted(r["cell"] for r in rows) == sorted(theirs)
    for r in rows:
        assert {k: r[k] for k in COMPARED} == {k: theirs[r["cell"]][k] for k in COMPARED}
        assert per_sample(results, r["cell"]) == per_sample(reference, r["cell"])
        assert float(r["clean_acc"]) >= 0.3  # points attacked (chance: 0.1): the per-sample comparison has teeth
    assert checkpoints(results) == checkpoints(reference) and len(checkpoints(results)) == 2
    for name in checkpoints(results):  # resumed trainings end in the uninterrupted run's weights, bit for bit
        ours, ref_model = (torch.load(d / "cache" / "checkpoints" / name, weights_only=True)["model"]
                           for d in (results, reference))
        assert ours.keys() == ref_model.keys() and all(torch.equal(ours[k], ref_model[k]) for k in ours)
    assert not list((results / "cache").rglob("*.partial.pt")) and (results / "leaderboard.md").exists()
