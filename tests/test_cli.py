"""Bad input must give a one-paragraph error, a non-zero exit code and no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(*args, env_extra=None, cwd=None):
    env = {**os.environ, "BENCH_PROGRESS": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=300)


def _assert_clean_error(p, *needles):
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, out


def test_misspelled_defense(tmp_path):
    p = bench("run", "--defense", "naturl", "--attack", "pgd_linf", "--results-dir", str(tmp_path))
    _assert_clean_error(p, "naturl", "Did you mean 'natural'")


def test_misspelled_key_in_config(config_copy, tmp_path):
    config_copy.write_text(config_copy.read_text().replace("loss = \"ce\"", "los = \"ce\"", 1))
    p = bench("run", "--config", str(config_copy), "--results-dir", str(tmp_path))
    _assert_clean_error(p, "attacks.pgd_linf.los", "loss")


def test_negative_eps(config_copy, tmp_path):
    text = config_copy.read_text()
    assert 'abstract = true\neps = "8/255"' in text  # [attacks.linf_budget], every Linf attack's budget
    config_copy.write_text(text.replace('abstract = true\neps = "8/255"', 'abstract = true\neps = "-8/255"', 1))
    p = bench("list", "--config", str(config_copy))
    _assert_clean_error(p, "attacks.linf_budget.eps", "greater than or equal to 0", "takes it through `extends`")


def test_error_messages_print_bracketed_config_names_literally(tmp_path):
    p = bench("table", "--spec", "nope", "--results-dir", str(tmp_path))
    _assert_clean_error(p, "no [tables.nope] in")


def test_missing_data_folder(tmp_path):
    p = bench("run", "--data-root", str(tmp_path / "no_data"), "--results-dir", str(tmp_path / "r"),
              env_extra={"BENCH_NO_DOWNLOAD": "1"})
    _assert_clean_error(p, str(tmp_path / "no_data"), "BENCH_DATA")


def test_help_explains_every_option():
    p = bench("run", "--help")
    assert p.returncode == 0
    for opt in ("--defense", "--attack", "--profile", "--dataset", "--n-test", "--device", "--seed", "--force"):
        assert opt in p.stdout


def test_list_shows_plugins_and_params():
    p = bench("list")
    assert p.returncode == 0 and "natural" in p.stdout and "pgd_linf" in p.stdout and "restarts" in p.stdout


def test_without_a_bar_long_work_still_logs_progress_lines(monkeypatch):
    import time as _time

    from bench import progress

    lines = []
    monkeypatch.setenv("BENCH_PROGRESS", "0")
    monkeypatch.setenv("BENCH_HEARTBEAT", "0.001")
    monkeypatch.setattr(progress, "log", lines.append)
    with progress.bar("pgd_at epoch 1/3", 4) as advance:
        for _ in range(4):
            _time.sleep(0.005)
            advance(loss=0.5)
    assert len(lines) == 3 and lines[0].startswith("pgd_at epoch 1/3: 1/4 loss=0.5") and "eta" in lines[0]
    monkeypatch.setenv("BENCH_HEARTBEAT", "0")
    lines.clear()
    with progress.bar("quiet", 3) as advance:
        advance(3)
    assert lines == []


def test_audit_rejects_an_unknown_role_before_loading_anything(tmp_path):
    p = bench("audit", "--defense", "natural", "--only", "effort,blackbox", "--results-dir", str(tmp_path))
    assert p.returncode == 2
    _assert_clean_error(p, "'blackbox'", "black_box", "single_step")
    assert not any(tmp_path.iterdir())  # nothing written
