"""The first real cell end to end on real data: natural ResNet-32 × pgd_linf (smoke profile)."""
import csv
import re
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bench

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.ci]


def test_smoke_cell_breaks_a_natural_model(env, natural_smoke):
    (row,) = bench.run(defense="natural", attack="pgd_linf", dataset="cifar10", profile="smoke", env=env)
    assert float(row["clean_acc"]) > 0.3  # chance is 0.1
    assert float(row["robust_acc"]) < 0.05
    assert int(row["n"]) == 200 and int(row["backward_passes"]) > 0
    for key in ("git_sha", "versions", "device", "config_hash", "defense_ckpt", "timestamp"):
        assert row[key]
    # a second run reuses the checkpoint and skips the finished cell
    before = len(env.store.rows())
    (again,) = bench.run(defense="natural", attack="pgd_linf", dataset="cifar10", profile="smoke", env=env)
    assert len(env.store.rows()) == before and again["cell"] == row["cell"]


def test_kill_mid_run_keeps_rows_and_resumes(tmp_path, data_root):
    """kill -9 during training: earlier rows stay intact, and the re-run resumes from the last finished epoch."""
    cfg = tmp_path / "bench.toml"
    text = (REPO / "bench.toml").read_text()
    # small trainings: the first only has to leave a row behind; the second has to be killed after epoch 1 is saved
    # and before it finishes, with epochs left to resume (four batches of 100 an epoch, six epochs)
    text = text.replace("[defenses.natural.profile.smoke]\nepochs = 3\nn_train = 10000",
                        "[defenses.natural.profile.smoke]\nepochs = 1\nn_train = 200")
    assert "n_train = 200" in text
    cfg.write_text(text + '\n[defenses.natural_b]\nplugin = "natural"\nepochs = 6\nn_train = 400\nbatch_size = 100\nmonitor_n = 50\n')
    results = tmp_path / "results"
    base = [sys.executable, "-m", "bench.cli", "run", "--config", str(cfg), "--data-root", str(data_root),
            "--results-dir", str(results), "--n-test", "20", "--attack", "fgsm"]
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    subprocess.run([*base, "--defense", "natural"], check=True, env=env, capture_output=True, timeout=600)
    rows_before = (results / "results.csv").read_text()

    proc = subprocess.Popen([*base, "--defense", "natural_b"], env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # epoch 2 logged => epoch 1 is saved (epoch 2 may be too); kill hard mid-training
        if line.startswith("epoch=2"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (results / "results.csv").read_text() == rows_before
    assert list((results / "cache" / "checkpoints").glob("*.partial.pt"))

    done = subprocess.run([*base, "--defense", "natural_b"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"resuming training of natural at epoch [23]/6", done.stderr), done.stderr
    with open(results / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["defense"] for r in rows] == ["natural", "natural_b"]
    assert not list((results / "cache" / "checkpoints").glob("*.partial.pt"))
