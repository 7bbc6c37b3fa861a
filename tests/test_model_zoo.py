"""The committed model zoo (bench/zoo.py, `bench zoo`): a checkpoint added to the zoo is used by a fresh results
folder (an empty cache, as on a fresh clone) without training, on the single-cell and the scheduler path, and gives
the same numbers; a damaged entry is found by `bench zoo verify` and refused by `bench run` with the remedy."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_natural

pytestmark = [pytest.mark.slow, pytest.mark.ci]  # bench subprocesses: ~1 min on 2 idle cores

REPO = Path(__file__).resolve().parents[1]
TINY = "\n" + tiny_natural("zoo_tiny")
COMMON = ["--dataset", "mnist", "--profile", "smoke", "--n-test", "40"]


def bench(*args, cwd=None):
    env = {**os.environ, "BENCH_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def out(p) -> str:
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def zoo_setup(tmp_path_factory):
    """A config whose zoo is a private folder, with zoo_tiny trained into a first results folder and added."""
    root = tmp_path_factory.mktemp("zoo")
    text = (REPO / "bench.toml").read_text().replace('zoo_dir = "results/zoo"', f'zoo_dir = "{root / "zoo"}"', 1)
    assert str(root / "zoo") in text
    cfg = root / "bench.toml"
    cfg.write_text(text + TINY)
    first = root / "first"
    p = bench("run", "-d", "zoo_tiny", "-a", "fgsm", *COMMON, "--config", cfg, "--results-dir", first)
    assert p.returncode == 0, out(p)
    p = bench("zoo", "add", "-d", "zoo_tiny", "--dataset", "mnist", "--profile", "smoke", "--config", cfg,
              "--results-dir", first)
    assert p.returncode == 0 and "added" in out(p), out(p)
    return cfg, root, first


def _row(results: Path) -> dict:
    import csv

    with open(results / "results.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    return row


def test_zoo_entry_has_a_verifiable_card(zoo_setup):
    cfg, root, first = zoo_setup
    (pt,) = (root / "zoo").glob("*.pt")
    card = json.loads(pt.with_suffix(".json").read_text())
    import hashlib

    assert card["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert {card["entry"], card["dataset"], card["profile"], card["seed"]} == {"zoo_tiny", "mnist", "smoke", 0}
    assert 0.3 <= card["clean_acc"] <= 1 and card["clean_n"] > 0 and card["history"]  # trained, with its log
    assert _row(first)["defense_ckpt"] == pt.stem  # the zoo's key is the cache's content key
    p = bench("zoo", "list", "--config", cfg)
    assert p.returncode == 0 and pt.stem in p.stdout and "zoo_tiny" in p.stdout, out(p)
    p = bench("zoo", "verify", "--config", cfg)
    assert p.returncode == 0 and "1 of 1 zoo entries verified" in p.stdout, out(p)


@pytest.mark.parametrize("attacks", [["fgsm"], ["fgsm", "pgd_linf"]], ids=["one-cell", "scheduler"])
def test_fresh_results_folder_uses_the_zoo_without_training(zoo_setup, attacks, tmp_path):
    cfg, _, first = zoo_setup
    fresh = tmp_path / "fresh"
    p = bench("run", "-d", "zoo_tiny", *[x for a in attacks for x in ("-a", a)], *COMMON, "--config", cfg,
              "--results-dir", fresh, *(["--devices", "cpu", "--plain"] if len(attacks) > 1 else []))
    log = out(p)
    assert p.returncode == 0, log
    assert "from the model zoo" in log and "(sha256 verified)" in log and "training on" not in log, log
    if len(attacks) > 1:
        assert "0 trainings" in log, log
    import csv

    with open(fresh / "results.csv", newline="", encoding="utf-8") as f:
        rows = {r["attack"]: r for r in csv.DictReader(f)}
    ref = _row(first)
    for k in ("clean_acc", "robust_acc", "defense_ckpt"):
        assert rows["fgsm"][k] == ref[k], (k, rows["fgsm"], ref)


def test_damaged_zoo_entry_is_found_and_refused_with_the_remedy(zoo_setup, tmp_path):
    cfg, root, _ = zoo_setup
    text = cfg.read_text().replace(str(root / "zoo"), str(tmp_path / "zoo"), 1)
    damaged_cfg = tmp_path / "bench.toml"
    damaged_cfg.write_text(text)
    (tmp_path / "zoo").mkdir()
    for f in (root / "zoo").iterdir():
        (tmp_path / "zoo" / f.name).write_bytes(f.read_bytes())
    (pt,) = (tmp_path / "zoo").glob("*.pt")
    pt.write_bytes(pt.read_bytes()[:4000])
    p = bench("zoo", "verify", "--config", damaged_cfg)
    assert p.returncode == 1 and "DAMAGED" in p.stdout and str(pt) in p.stdout, out(p)
    fresh = tmp_path / "fresh"
    p = bench("run", "-d", "zoo_tiny", "-a", "fgsm", *COMMON, "--config", damaged_cfg, "--results-dir", fresh)
    log = out(p)
    assert p.returncode == 2 and str(pt) in log and "does not match its card" in log and "Traceback" not in log, log
    assert "Delete" not in log and "training on" not in log, log  # the zoo's remedy is never to retrain over it
    assert not (fresh / "results.csv").exists()


def test_zoo_add_without_a_cached_checkpoint_says_how(zoo_setup, tmp_path):
    cfg, _, _ = zoo_setup
    p = bench("zoo", "add", "-d", "zoo_tiny", "--dataset", "mnist", "--profile", "smoke", "--seed", "3",
              "--config", cfg, "--results-dir", tmp_path / "r")
    log = out(p)
    assert p.returncode == 2 and "Train it first: bench train -d zoo_tiny" in log and "Traceback" not in log, log


def test_committed_zoo_entries_verify_and_match_the_current_config():
    """Every checkpoint committed in results/zoo verifies (sha256, weights_only load) and is still the one its card's
    entry × dataset × profile × seed resolves to: a bench.toml edit that changes a trained entry's config would
    otherwise silently leave the zoo unused."""
    from bench.config import load_config
    from bench.runner import checkpoint_key
    from bench.zoo import ModelZoo

    cfg = load_config(REPO / "bench.toml")
    zoo = ModelZoo.of(cfg)
    cards = zoo.cards()
    assert cards, f"no committed checkpoint in {zoo.root}"
    assert zoo.size_mb() <= cfg.settings.zoo_max_mb
    for card in cards:
        zoo.verify(card["key"])
        resolved = cfg.defense(card["entry"], card["dataset"], card["profile"])
        assert checkpoint_key(resolved, card["dataset"], card["seed"]) == card["key"], card["entry"]
