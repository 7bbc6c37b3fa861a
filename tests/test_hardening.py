"""Hardened CLI and results store, each case through the real `bench` entry point in a subprocess:
the exit code (2 = usage / input error, 130 = interrupted), no traceback, a message that names the bad value or
the remedy, and results.csv byte-identical wherever the command must not touch it.

Trainings use a config copy whose natural defense trains 96 images for a few epochs (seconds on 2 cores)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAST_NATURAL = "epochs = {epochs}\nn_train = 96\nbatch_size = 32\nmonitor_n = 16\n"
N = "8"  # test images per cell
CELL = ["run", "-d", "natural", "-a", "fgsm", "--n-test", N]


def _env(extra=None) -> dict:
    data = os.environ.get("BENCH_DATA") or str(REPO.parent / "shared" / "data")
    env = {**os.environ, "BENCH_PROGRESS": "0", "BENCH_DATA": data, "BENCH_NO_DOWNLOAD": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("BENCH_CONFIG", None)
    env.update(extra or {})
    return env


def bench(*args, cwd=None, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=_env(env_extra), timeout=timeout)


def _as_from_a_terminal() -> None:
    # a shell without job control starts a background command (`bash .ci/run &`) with SIGINT ignored, and so does
    # every process it spawns; Python then installs no KeyboardInterrupt handler and the Ctrl-C tests would wait
    # forever. A user's `bench` in a terminal has the default: give the spawned runs that
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args, cwd=None, env_extra=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd or REPO, env=_env(env_extra),
                            preexec_fn=_as_from_a_terminal)


def output(p) -> str:
    return (p.stdout or "") + (p.stderr or "")


def assert_refused(p, code, *needles):
    out = output(p)
    assert p.returncode == code, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, f"{n!r} not in:\n{out}"


def make_config(folder: Path, epochs: int = 3, edit=None) -> Path:
    """A copy of bench.toml whose natural defense trains 96 images at the smoke profile."""
    text = (REPO / "bench.toml").read_text()
    head = "[defenses.natural.profile.smoke]\n"
    start = text.index(head) + len(head)
    end = text.index("\n[", start) + 1
    text = text[:start] + FAST_NATURAL.format(epochs=epochs) + text[end:]
    if edit:
        text = edit(text)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.toml"
    path.write_text(text)
    return path


def in_attack(name: str, old: str, new: str):
    """An edit of the first `old` inside [attacks.NAME]."""
    def edit(text: str) -> str:
        i = text.index(f"[attacks.{name}]\n")
        j = text.index(old, i)
        return text[:j] + new + text[j + len(old):]
    return edit


def csv_rows(results: Path) -> list[dict]:
    import csv

    with open(results / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished cell (natural × fgsm, n = 8) with its checkpoint: (config, results folder, output)."""
    root = tmp_path_factory.mktemp("finished")
    cfg = make_config(root)
    p = bench(*CELL, "--config", cfg, "--results-dir", root / "results")
    assert p.returncode == 0, output(p)
    return cfg, root / "results", p.stderr


@pytest.fixture
def results_copy(finished, tmp_path):
    cfg, results, _ = finished
    dst = tmp_path / "results"
    shutil.copytree(results, dst)
    return cfg, dst


# ------------------------------------------------------------------ usage errors: exit 2, one paragraph

@pytest.mark.parametrize("args, needles", [
    (["--n-test", "0"], ["--n-test", "0", "1 to 10000"]),
    (["--n-test", "-5"], ["--n-test", "-5", "1 to 10000"]),
    (["--n-test", "20000"], ["--n-test", "20000", "1 to 10000"]),
    (["--seed", "abc"], ["--seed", "'abc'", "integer"]),
    (["--seed", "-1"], ["--seed", "-1", "0 to"]),
    (["--defence", "natural"], ["--defence", "Did you mean --defense"]),
], ids=["n-test-0", "n-test-negative", "n-test-too-large", "seed-not-a-number", "seed-negative", "unknown-option"])
def test_bad_run_options_are_usage_errors(args, needles, results_copy):
    cfg, results = results_copy
    before = (results / "results.csv").read_bytes()
    p = bench(*CELL, *args, "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, *needles)
    assert (results / "results.csv").read_bytes() == before


def test_unknown_command_and_missing_required_option():
    p = bench("rn")
    assert_refused(p, 2, "'rn'", "Did you mean 'run'", "Allowed:")
    p = bench("train")
    assert_refused(p, 2, "bench train needs --defense")


def test_perf_suite_refuses_a_cells_dir_with_files_before_any_work(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "results.csv").write_text("cell\n")
    p = bench("perf-suite", "-d", "natural", "--suite", "linf", "-p", "smoke", "--cells-dir", cells,
              "--results-dir", tmp_path / "results")
    assert_refused(p, 2, f"--cells-dir {cells}", "new or empty folder")
    assert not (tmp_path / "results").exists() and (cells / "results.csv").read_text() == "cell\n"


@pytest.mark.parametrize("more", [[], ["-a", "pgd_linf"]], ids=["one-cell", "scheduler"])
def test_n_test_beyond_the_test_set_from_bench_toml(more, tmp_path):
    cfg = make_config(tmp_path, edit=lambda t: t.replace("n_test = 200\n", "n_test = 20000\n", 1))
    p = bench(*CELL[:-2], *more, "--config", cfg, "--results-dir", tmp_path / "r")
    assert_refused(p, 2, "n_test = 20000", "Allowed: 1 to 10000")
    assert not [f for f in (tmp_path / "r").rglob("*") if f.is_file()]  # refused before training or planning


# ------------------------------------------------------------------ bench.toml: strict and finite values

@pytest.mark.parametrize("edit, needles", [
    (in_attack("pgd_linf", "loss = \"ce\"", "steps = true\nloss = \"ce\""), ["attacks.pgd_linf.steps", "boolean"]),
    # in the abstract bases pgd_linf extends: the error names the base's table, where the value is
    (in_attack("pgd_cuts", "steps = 40", "steps = true"), ["attacks.pgd_cuts.steps", "boolean", "[attacks.pgd_linf]"]),
    (in_attack("linf_budget", 'eps = "8/255"', "eps = inf"), ["attacks.linf_budget.eps", "inf", "finite"]),
    (in_attack("linf_budget", 'eps = "8/255"', "eps = 1e9"), ["attacks.linf_budget.eps", "Allowed: 0 to 1"]),
    (lambda t: t.replace("seed = 0", "seed = -1", 1), ["settings.seed", "-1"]),
    (lambda t: t.replace('device = "auto"', 'device = "gpu"', 1), ["settings.device", "'gpu'", "auto, cpu, cuda"]),
    # the right name in the wrong section: an attack extending a defense says so
    (lambda t: t + '\n[attacks.my_pgd]\nextends = "natural"\n', ["attacks.my_pgd.extends", "'natural' is a defense"]),
], ids=["bool-for-int", "bool-for-int-in-a-base", "inf", "eps-beyond-the-image-space", "negative-seed",
        "unknown-device", "attack-extends-a-defense"])
def test_bad_config_values_are_refused_before_any_work(edit, needles, tmp_path):
    cfg = make_config(tmp_path, edit=edit)
    p = bench(*CELL, "--config", cfg, "--results-dir", tmp_path / "r")
    assert_refused(p, 2, *needles)
    assert not (tmp_path / "r" / "results.csv").exists()


def test_non_utf8_config(tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_bytes((REPO / "bench.toml").read_bytes().replace(b"[settings]", b"[settings]\n# caf\xe9", 1))
    p = bench("list", "--config", cfg)
    assert_refused(p, 2, str(cfg), "UTF-8", "0xe9")


def test_no_silent_fallback_to_the_repository_config(tmp_path):
    p = bench(*CELL, cwd=tmp_path)
    assert_refused(p, 2, str(tmp_path), "--config", "BENCH_CONFIG")
    assert not (tmp_path / "results").exists()


def test_first_log_line_names_the_config_in_use(finished):
    cfg, results, out = finished
    first = out.strip().splitlines()[0]
    assert first.startswith("config ") and str(cfg) in first and str(results) in first, out


def test_poisoned_row_is_moved_out_and_tables_still_render(results_copy):
    """A row with eps = inf (written before validation refused it) made every table exit 1."""
    cfg, results = results_copy
    lines = (results / "results.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    poisoned = lines[1].split(",")
    poisoned[header.index("eps")] = "inf"
    poisoned[0] = "0000poisoned0000"
    (results / "results.csv").write_text("".join(lines) + ",".join(poisoned))
    p = bench("table", "--config", cfg, "--results-dir", results)
    out = output(p)
    assert p.returncode == 0 and "Traceback" not in out, out
    corrupt = list(results.glob("results.csv.corrupt-*"))
    assert len(corrupt) == 1 and "0000poisoned0000" in corrupt[0].read_text() and str(corrupt[0]) in out
    assert "0000poisoned0000" not in (results / "results.csv").read_text()
    assert (results / "results.csv").read_text() == "".join(lines)


# ------------------------------------------------------------------ results.csv: never a torn or malformed row

def test_torn_last_row_is_moved_out_and_the_cell_recomputed(results_copy):
    cfg, results = results_copy
    full = (results / "results.csv").read_text()
    torn = full[:full.rindex("\n", 0, len(full) - 1) + 1] + full.splitlines()[-1][:60]  # the row cut mid-way
    (results / "results.csv").write_text(torn)
    p = bench(*CELL, "--config", cfg, "--results-dir", results)
    out = output(p)
    assert p.returncode == 0 and "Traceback" not in out, out
    assert "malformed" in out and "finished earlier" not in out, out
    (corrupt,) = results.glob("results.csv.corrupt-*")
    assert full.splitlines()[-1][:60] in corrupt.read_text()
    rows = csv_rows(results)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["git_sha"] and rows[0]["config_hash"]


@pytest.mark.parametrize("damage, needles", [
    (lambda b: b.replace(b",status,", b",state,", 1), ["'status' column", "move it away"]),
    (lambda b: b.replace(b"cell,", b"key,", 1), ["'cell' column", "move it away"]),
    (lambda b: b"\xff\xfe" + os.urandom(64), ["not UTF-8", "move it away"]),
], ids=["no-status-column", "no-cell-column", "random-bytes"])
def test_unreadable_results_table_is_refused_untouched(damage, needles, results_copy):
    cfg, results = results_copy
    path = results / "results.csv"
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    p = bench(*CELL, "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, str(path), *needles)
    assert path.read_bytes() == before


def test_unknown_columns_are_kept(results_copy):
    cfg, results = results_copy
    path = results / "results.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",reviewer"] + [line + ",keep-me" for line in lines[1:]]) + "\n")
    p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)  # another cell: a second row
    assert p.returncode == 0, output(p)
    rows = csv_rows(results)
    assert len(rows) == 2 and rows[0]["reviewer"] == "keep-me" and rows[1]["reviewer"] == ""


def test_a_table_without_an_optional_column_renders_and_runs(results_copy):
    """A results.csv written before a column existed (or edited by hand), here without wall_s: `bench table` and
    `bench run` read its missing values as empty instead of failing on a missing key, and the next row restores
    the column."""
    cfg, results = results_copy
    import csv

    rows = csv_rows(results)
    with open(results / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "wall_s"], lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert "Traceback" not in output(t := bench("table", "--config", cfg, "--results-dir", results)), output(t)
    assert t.returncode == 0
    p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)  # another cell: a second row
    assert p.returncode == 0 and "Traceback" not in output(p), output(p)
    rows = csv_rows(results)
    assert len(rows) == 2 and rows[0]["wall_s"] == "" and float(rows[1]["wall_s"]) > 0


def test_a_killed_writers_temporary_file_is_removed_by_the_next_row(results_copy):
    """kill -9 between the temporary write and the rename leaves `.results.csv.*.tmp`; the next run that writes a
    row (under the table's lock, so no live writer owns it) removes it."""
    cfg, results = results_copy
    stale = results / ".results.csv.k9x2ab.tmp"
    stale.write_text("cell,dataset\n")
    p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)
    assert p.returncode == 0, output(p)
    assert not stale.exists() and len(csv_rows(results)) == 2


def test_result_files_are_readable_by_others(finished):
    cfg, results, _ = finished
    files = [results / "results.csv", results / "leaderboard.md", *results.glob("runs/*.json"),
             *results.glob("cache/checkpoints/*.pt")]
    umask = os.umask(0)
    os.umask(umask)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# ------------------------------------------------------------------ caught before the work, with a remedy

def test_results_dir_that_is_a_file(finished, tmp_path):
    cfg, _, _ = finished
    (tmp_path / "results").write_text("not a folder")
    p = bench(*CELL, "--config", cfg, "--results-dir", tmp_path / "results")
    assert_refused(p, 2, str(tmp_path / "results"), "is a file, not a folder")
    p = bench(*CELL, "--config", cfg, "--results-dir", tmp_path / "results" / "sub")
    assert_refused(p, 2, str(tmp_path / "results" / "sub"), "Cannot create")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_folder(results_copy):
    cfg, results = results_copy
    before = (results / "results.csv").read_bytes()
    results.chmod(0o555)
    try:
        p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)
    finally:
        results.chmod(0o755)
    assert_refused(p, 2, str(results), "not writable")
    assert "fgsm on natural" not in output(p) and (results / "results.csv").read_bytes() == before


@pytest.mark.parametrize("dataset, folder, kept, missing, more", [
    ("cifar10", "cifar-10-batches-bin", ["test_batch.bin"], "data_batch_1.bin", []),
    ("cifar10", "cifar-10-batches-bin", ["test_batch.bin"], "data_batch_1.bin", ["-a", "pgd_linf"]),
    ("mnist", "MNIST/raw", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"], "train-images-idx3-ubyte",
     ["-a", "pgd_linf"]),
], ids=["cifar-one-cell", "cifar-matrix", "mnist-matrix"])
def test_data_folder_without_the_train_split(dataset, folder, kept, missing, more, tmp_path, finished):
    """Only the test split present: refused before any work, on the scheduler path too (where the training job
    used to fail in a worker and write blocked rows)."""
    cfg, _, _ = finished
    data = tmp_path / "data" / folder
    data.mkdir(parents=True)
    for name in kept:
        shutil.copy(Path(_env()["BENCH_DATA"]) / folder / name, data)
    results = tmp_path / "r"
    p = bench(*CELL, *more, "--dataset", dataset, "--config", cfg, "--results-dir", results,
              "--data-root", tmp_path / "data")
    assert_refused(p, 2, str(data), f"{missing}", "(missing)", "--data-root")
    assert "[scheduler]" not in output(p) and sorted(f.name for f in results.rglob("*") if f.is_file()) == []


def test_truncated_checkpoint_names_the_file_and_the_remedy(results_copy):
    cfg, results = results_copy
    (ckpt,) = results.glob("cache/checkpoints/*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    before = (results / "results.csv").read_bytes()
    p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, str(ckpt), "damaged", f"Delete {ckpt}")
    assert (results / "results.csv").read_bytes() == before


@pytest.mark.slow
@pytest.mark.ci
def test_damaged_checkpoint_on_the_scheduler_blocks_its_cells_once_with_the_remedy(results_copy):
    """The scheduler verifies a cached checkpoint once, before its cells run: its training node fails with the
    file and the remedy, its cells are blocked with that reason (no worker loads it, no cell 'failed' on it), and
    once the remedy is followed the same command finishes them."""
    cfg, results = results_copy
    (ckpt,) = results.glob("cache/checkpoints/*.pt")
    side = ckpt.with_suffix(".json")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    (finished_row,) = csv_rows(results)
    cmd = [*CELL, "-a", "pgd_linf", "-a", "pgd_l2", "--config", cfg, "--results-dir", results]
    for _ in range(2):  # a re-run says the same once more; it neither retries nor adds rows
        p = bench(*cmd)
        out = output(p)
        assert_refused(p, 2, str(ckpt), "is damaged", f"Delete {ckpt} and {side}")
        assert out.count("[scheduler] FAILED") == 1 and "using cached checkpoint" not in out, out
        rows = csv_rows(results)
        assert rows[0] == finished_row and [r["status"] for r in rows] == ["ok", "blocked", "blocked"], rows
        assert all(f"{ckpt} is damaged" in r["warnings"] and f"Delete {ckpt}" in r["warnings"] for r in rows[1:])
    ckpt.unlink()
    side.unlink()
    p = bench(*cmd)
    out = output(p)
    assert p.returncode == 0 and out.count("[natural] training on") == 1, out
    rows = csv_rows(results)
    assert rows[0] == finished_row and len(rows) == 3 and all(r["status"] == "ok" for r in rows), rows


# ------------------------------------------------------------------ Ctrl-C and concurrent processes

def _interrupt_when(p: subprocess.Popen, pattern: str, sig=signal.SIGINT) -> str:
    lines, sent = [], False
    for line in p.stdout:
        lines.append(line)
        if not sent and re.search(pattern, line):
            p.send_signal(sig)
            sent = True
    p.wait(timeout=120)
    assert sent, "".join(lines)
    return "".join(lines)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_exits_130_and_the_same_command_resumes(tmp_path, sig, code):
    cfg = make_config(tmp_path, epochs=6)
    cmd = [*CELL, "--config", cfg, "--results-dir", tmp_path / "r"]
    # held just before the rename of epoch 2's resume state (epoch 1's is on disk), so Ctrl-C lands mid-training
    # however late this test reads the output: sent on reading "epoch=2", it once arrived after a loaded CI
    # machine had finished all 6 epochs and the cell, and the run rightly exited 0
    hook = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "pause_hook"),
                                                        os.environ.get("PYTHONPATH")])),
            "BENCH_TEST_PAUSE": r"write \.partial\.pt$ 2"}
    p = spawn(*cmd, env_extra=hook)
    out = _interrupt_when(p, r"^PAUSED ", sig)
    assert p.returncode == code, out
    assert "interrupted — finished rows and checkpoints are saved; the same command resumes" in out, out
    assert "Traceback" not in out and not (tmp_path / "r" / "results.csv").exists()
    again = bench(*cmd)
    out = output(again)
    assert again.returncode == 0 and "resuming training of natural at epoch" in out, out
    assert len(csv_rows(tmp_path / "r")) == 1


@pytest.mark.slow
def test_ctrl_c_during_a_matrix_exits_130(tmp_path):
    cfg = make_config(tmp_path, epochs=6)
    p = spawn(*CELL, "-a", "pgd_linf", "--config", cfg, "--results-dir", tmp_path / "r")
    out = _interrupt_when(p, r"^epoch=1 ")
    assert p.returncode == 130 and "the same command resumes" in out and "Traceback" not in out, out


@pytest.mark.slow
@pytest.mark.ci
def test_four_concurrent_runs_of_three_cells_write_three_rows_and_train_once(tmp_path):
    cfg = make_config(tmp_path)
    cmd = [*CELL, "-a", "pgd_linf", "-a", "pgd_l2", "--config", cfg, "--results-dir", tmp_path / "r"]
    procs = [spawn(*cmd) for _ in range(4)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out, out
    rows = csv_rows(tmp_path / "r")
    assert len(rows) == 3 and {r["attack"] for r in rows} == {"fgsm", "pgd_linf", "pgd_l2"}, rows
    assert all(r["status"] == "ok" for r in rows)
    trainings = sum(out.count("[natural] training on") for out in outs)
    assert trainings == 1, "\n=====\n".join(outs)


def _collect(p: subprocess.Popen, lines: list) -> threading.Thread:
    t = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    t.start()
    return t


@pytest.mark.slow
@pytest.mark.ci
def test_concurrent_single_cell_runs_compute_the_cell_once(tmp_path):
    import fcntl

    cfg = make_config(tmp_path)
    results = tmp_path / "r"
    cmd = [*CELL, "--config", cfg, "--results-dir", results]
    procs = [spawn(*cmd) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (row,) = csv_rows(results)
    assert sum(out.count("[natural] training on") for out in outs) == 1, outs
    # two forced re-runs that overlap (this test holds the cell's lock until both wait for it): one new row
    with open(results / "locks" / f"cell-{row['cell']}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [spawn(*cmd, "--force") for _ in range(2)]
        lines = [[], []]
        readers = [_collect(p, out) for p, out in zip(procs, lines)]
        deadline = time.time() + 120
        while not all(any("waiting for it" in line for line in out) for out in lines):
            assert time.time() < deadline and all(p.poll() is None for p in procs), lines
            time.sleep(0.2)
        fcntl.flock(lock, fcntl.LOCK_UN)
    for p, t in zip(procs, readers):
        p.wait(timeout=300)
        t.join(timeout=10)
    outs = ["".join(out) for out in lines]
    assert all(p.returncode == 0 for p in procs), outs
    rows = csv_rows(results)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    assert sum("finished by another run meanwhile" in out for out in outs) == 1, outs


def test_unwritable_folder_is_one_clear_error(tmp_path, monkeypatch):
    """The check behind `bench run` on a read-only results folder (root writes anywhere, so it is simulated)."""
    from bench import store

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkstemp", denied)
    with pytest.raises(store.StoreError, match="is not writable") as e:
        store.ensure_writable_dir(tmp_path, "results folder")
    assert str(tmp_path) in str(e.value)


# ------------------------------------------------------------------ a failed attempt never hides a finished row

def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("retry", [["--n-test", "6", "--plain"], ["--force", "--plain"]], ids=["other-n", "force"])
def test_a_failed_retry_never_hides_the_finished_row(retry, results_copy):
    """A finished cell, then its checkpoint truncated and the cell retried (another --n-test, or --force): the retry
    is refused (exit 2, the file named) and its blocked row is appended, but `bench table`, the CSV export, the
    threat boards and `bench status` still show the finished number, with a footnote that the newer attempt
    failed and why; the finished row and the checkpoint are left byte-identical."""
    cfg, results = results_copy
    (ckpt,) = results.glob("cache/checkpoints/*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    (done,) = csv_rows(results)
    before = (results / "results.csv").read_bytes()
    ckpt_sha = _sha(ckpt)
    p = bench(*CELL, *retry, "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, str(ckpt), "is damaged")
    assert (results / "results.csv").read_bytes().startswith(before) and _sha(ckpt) == ckpt_sha
    assert [r["status"] for r in csv_rows(results)] == ["ok", "blocked"]
    shown = f"{100 * float(done['robust_acc']):.1f} ± "
    t = bench("table", "--config", cfg, "--results-dir", results)
    out = output(t)
    assert t.returncode == 0 and "Traceback" not in out, out
    board = (results / "leaderboard.md").read_text()
    (line,) = [x for x in board.splitlines() if x.startswith("| natural")]
    assert shown in line and "blocked" not in line, board
    assert "natural × fgsm: a newer attempt of this cell failed (blocked, " in board and str(ckpt) in board, board
    assert f"n {done['n']}." in board and "n , " not in board, board
    assert shown in (results / "leaderboard.csv").read_text()
    boards = [b for b in (results / "leaderboards").rglob("*.md") if b.name != "index.md"]
    assert boards and all("a newer attempt of this cell failed (blocked" in b.read_text() for b in boards), boards
    s = bench("status", "-d", "natural", "-a", "fgsm", "--n-test", N, "--config", cfg, "--results-dir", results)
    assert s.returncode == 0 and "cells: 1 ok" in output(s), output(s)
    if "--force" in retry:  # the same cell: its finished row stands, and status says a newer attempt was blocked
        assert "newer attempt blocked" in output(s), output(s)
    assert (results / "results.csv").read_bytes().startswith(before) and _sha(ckpt) == ckpt_sha


# ------------------------------------------------------------------ the model zoo: remedies that keep committed data

def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def zoo_repo(tmp_path):
    """A git repository holding a copy of the smallest committed zoo entry (committed), and a bench.toml whose zoo
    is that folder: (repository, config, checkpoint, card, the card's defense and dataset)."""
    import json

    cards = sorted((REPO / "results" / "zoo").glob("*.json"), key=lambda c: json.loads(c.read_text())["zoo_mb"])
    card = json.loads(cards[0].read_text())
    repo = tmp_path / "repo"
    zoo = repo / "results" / "zoo"
    zoo.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        shutil.copy(cards[0].with_suffix(suffix), zoo)
    text = (REPO / "bench.toml").read_text().replace('zoo_dir = "results/zoo"', f'zoo_dir = "{zoo}"', 1)
    (repo / "bench.toml").write_text(text)
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "zoo", cwd=repo)
    return repo, repo / "bench.toml", zoo / cards[0].with_suffix(".pt").name, zoo / cards[0].name, card


def _zoo_cell(card, *more):
    return ["run", "-d", card["entry"], "-a", "fgsm", "--dataset", card["dataset"], "--profile", card["profile"],
            "--n-test", "4", *more]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_or_missing_zoo_checkpoint_is_restored_from_git_not_retrained(damage, zoo_repo, tmp_path):
    """A committed zoo checkpoint truncated (its sha256 no longer the card's) or deleted with its card kept: `bench zoo
    verify` and `bench run` (one cell and the scheduler) name the file and advise `git checkout -- <path>`, never
    deleting the committed files and retraining; `bench run` stops with exit 2 before training or writing a row, and
    the zoo's files are left as they were."""
    repo, cfg, pt, side, card = zoo_repo
    if damage == "truncated":
        pt.write_bytes(pt.read_bytes()[:3000])
    else:
        pt.unlink()
    before = {f: _sha(f) for f in (pt, side) if f.exists()}
    rel = pt.relative_to(repo)
    v = bench("zoo", "verify", "--config", cfg, cwd=repo)
    assert_refused(v, 1, str(pt), f"`git checkout -- {rel}`", "DAMAGED" if damage == "truncated" else "MISSING")
    assert ("does not match its card" if damage == "truncated" else "is missing; its card") in output(v)
    for more in ([], ["-a", "pgd_linf", "--plain"]):
        p = bench(*_zoo_cell(card, *more), "--config", cfg, "--results-dir", tmp_path / "r", cwd=repo)
        assert_refused(p, 2, str(pt), f"`git checkout -- {rel}`", "--retrain")
        out = output(p)
        assert "Delete" not in out and "training on" not in out and "[scheduler] FAILED" not in out, out
        assert not (tmp_path / "r" / "results.csv").exists()
    assert {f: _sha(f) for f in (pt, side) if f.exists()} == before
    # outside the repository's folder the command names it; a zoo git does not track says what differs instead
    v = bench("zoo", "verify", "--config", cfg, cwd=tmp_path)
    assert f"git -C {repo} checkout -- {rel}" in output(v), output(v)
    _git("rm", "-q", "--cached", "-r", "results", cwd=repo)
    v = bench("zoo", "verify", "--config", cfg, cwd=repo)
    assert v.returncode == 1 and "git does not track" in output(v) and "git checkout" not in output(v), output(v)
    if damage == "truncated":
        assert "its sha256 is " in output(v) and "(3000 bytes), the card records " in output(v), output(v)


def test_retrain_trains_a_missing_zoo_checkpoint_into_the_cache(zoo_repo, tmp_path):
    """--retrain (documented in --help) goes past a missing zoo checkpoint to training it into the local cache: with
    a data folder that lacks the training split, the run reaches the training's data check, naming the missing
    file; the zoo is untouched."""
    repo, cfg, pt, side, card = zoo_repo
    pt.unlink()
    card_sha = _sha(side)
    assert "--retrain" in output(bench("run", "--help"))
    data = tmp_path / "data"
    data.mkdir()  # no dataset at all: the first file the training needs is named
    p = bench(*_zoo_cell(card, "--retrain"), "--config", cfg, "--results-dir", tmp_path / "r", "--data-root", data,
              cwd=repo)
    out = output(p)
    assert p.returncode == 2 and "Traceback" not in out, out
    # the data folder named by the training's data check (not only by the first log line, which names every root)
    named = [line for line in out.splitlines() if str(data) in line and not line.lower().startswith("config ")]
    assert "--retrain: training checkpoint" in out and named, out
    assert not pt.exists() and _sha(side) == card_sha and not (tmp_path / "r" / "results.csv").exists()


# ------------------------------------------------------------------ the last unclear messages

def _store_digests(results: Path) -> dict:
    """sha256 of every file bench keeps in a results folder (rows, manifests, checkpoints, cards)."""
    return {str(f.relative_to(results)): _sha(f) for f in sorted(results.rglob("*"))
            if f.is_file() and f.suffix in (".csv", ".json", ".pt")}


def test_an_attack_with_eps_zero_is_refused_at_load(tmp_path):
    """eps = 0 would report robust = clean under an attack's name: refused when bench.toml is read (bench list)."""
    cfg = make_config(tmp_path, edit=in_attack("linf_budget", 'eps = "8/255"', "eps = 0"))
    for cmd in (["list"], [*CELL, "--results-dir", tmp_path / "r"]):
        p = bench(*cmd, "--config", cfg)
        assert_refused(p, 2, "'attacks.linf_budget.eps' = 0", "perturbs nothing", "clean accuracy", "above 0")
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "results.csv").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle-protocol-4"])
def test_a_malicious_checkpoint_refusal_is_benchs_paragraph_only(legacy, results_copy, tmp_path):
    """A pickle payload in a cached checkpoint: the error is bench's one paragraph, without torch's UserWarning
    about the pickle protocol, torch's advice to load with weights_only=False, or ANSI escape codes."""
    import torch

    cfg, results = results_copy
    (ckpt,) = results.glob("cache/checkpoints/*.pt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    kwargs = {"_use_new_zipfile_serialization": False, "pickle_protocol": 4} if legacy else {}
    torch.save({"model": Evil(), "meta_json": "{}"}, ckpt, **kwargs)
    ckpt.with_suffix(".json").unlink()  # no recorded sha256: only weights_only stands in the way
    before = _store_digests(results)
    p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, f"error: Refused to load {ckpt}", "may be malicious", "(torch: ", f"Delete {ckpt}")
    out = output(p)
    assert out.splitlines()[1].startswith(f"error: Refused to load {ckpt}"), out  # after the config line
    for noise in ("UserWarning", "please file an issue", "weights_only` set to `False", "weights_only=False",
                  "\x1b["):
        assert noise not in out, (noise, out)
    assert not marker.exists() and _store_digests(results) == before


def test_random_bytes_as_a_regression_baseline(results_copy, tmp_path):
    cfg, results = results_copy
    baseline = tmp_path / "default-smoke-cpu.csv"
    baseline.write_bytes(b"\x8f\x00" + os.urandom(500))
    before = _sha(baseline), _store_digests(results)
    p = bench("regress", "--baseline", baseline, "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, str(baseline), "is not a CSV results file")
    assert "cut off" not in output(p) and (_sha(baseline), _store_digests(results)) == before


def test_an_option_given_twice_quotes_the_rejected_value(results_copy):
    cfg, results = results_copy
    before = _store_digests(results)
    p = bench(*CELL[:-2], "--n-test", "40", "--n-test", "0", "--config", cfg, "--results-dir", results)
    assert_refused(p, 2, "--n-test: 0 is not allowed", "1 to 10000")
    assert "'40'" not in output(p) and _store_digests(results) == before


def test_a_data_root_that_is_a_file(results_copy):
    cfg, results = results_copy
    before = _store_digests(results)
    p = bench(*CELL, "--config", cfg, "--results-dir", results, "--data-root", REPO / "README.md")
    assert_refused(p, 2, str(REPO / "README.md"), "is a file, not a folder", "--data-root")
    assert "download" not in output(p) and _store_digests(results) == before


def test_a_read_only_cache_holding_the_checkpoint_is_used(results_copy):
    """The cache folder read-only, with the checkpoint the cell needs in it: the cell runs (its row goes to the
    writable results folder) and the cache is left as it was. (Read-only by chmod for a user other than root, and
    by tests/readonly_hook for root too, whom chmod does not stop.)"""
    cfg, results = results_copy
    cache = results / "cache"
    before = _store_digests(cache)
    folders = [cache, *(d for d in cache.rglob("*") if d.is_dir())]
    for d in folders:
        d.chmod(0o555)
    hook = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "readonly_hook"),
                                                        os.environ.get("PYTHONPATH")])),
            "BENCH_TEST_READONLY": str(cache)}
    try:
        p = bench(*CELL[:-1], "6", "--config", cfg, "--results-dir", results, env_extra=hook)
        # what a training would need is refused with the folder named, not attempted
        (ckpt,) = cache.glob("checkpoints/*.pt")
        ckpt.rename(ckpt.with_suffix(".moved"))
        q = bench(*CELL[:-1], "5", "--config", cfg, "--results-dir", results, env_extra=hook)
        ckpt.with_suffix(".moved").rename(ckpt)
    finally:
        for d in folders:
            d.chmod(0o755)
    out = output(p)
    assert p.returncode == 0 and "Traceback" not in out and "using cached checkpoint" in out, out
    assert len(csv_rows(results)) == 2 and _store_digests(cache) == before
    assert_refused(q, 2, str(cache), "not writable")
    assert "training on" not in output(q) and len(csv_rows(results)) == 2


@pytest.mark.slow
def test_a_killed_scheduler_leaves_no_leaked_semaphore_warning(tmp_path):
    """kill -9 of a `bench run` on the scheduler: multiprocessing's resource tracker outlives it and cleans up its
    queues' semaphores; it used to warn 'There appear to be N leaked semaphore objects' on the user's terminal."""
    cfg = make_config(tmp_path, epochs=6)
    p = spawn(*CELL, "-a", "pgd_linf", "--plain", "--config", cfg, "--results-dir", tmp_path / "r")
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("epoch=1 "):
            p.kill()
            break
    rest = p.stdout.read()  # until every holder of the pipe (the orphaned tracker too) has exited
    p.wait(timeout=60)
    assert any(line.startswith("epoch=1 ") for line in lines), "".join(lines)
    assert "leaked semaphore" not in rest and "resource_tracker" not in rest, rest
