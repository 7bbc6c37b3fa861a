"""Shared fixtures: the real datasets (BENCH_DATA or ../shared/data) and one smoke-trained natural model
per test run, cached in a folder every test module (and every pytest-xdist worker) reuses."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def tiny_natural(name: str, n_train: int = 300, batch_size: int = 30, lr: str = "1e-3") -> str:
    """A [defenses.NAME] entry that trains a natural MNIST model in seconds: Adam at a constant LR learns MNIST in a
    few dozen steps (the natural entry's MNIST table is not inherited: plugin, not extends)."""
    return (f'[defenses.{name}]\nplugin = "natural"\nepochs = 1\nn_train = {n_train}\nbatch_size = {batch_size}\n'
            f'optimizer = "adam"\nlr = {lr}\nweight_decay = 0.0\nschedule = "constant"\naugment = "none"\n'
            f'monitor_n = 20\n')
os.environ.setdefault("BENCH_PROGRESS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one thread each (and in the bench processes they spawn), so two
    # workers on two cores do not fight over four threads (before torch is imported, which reads them)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """The test files with the most slow tests first, each file's tests in their own order: pytest-xdist
    (addopts: --dist loadfile --no-loadscope-reorder) hands out whole files in this order, so the long ones start
    early and the short ones fill in at the end instead of one long file running alone. The first worker to need
    the natural smoke checkpoint trains it while any other that needs it waits: the other workers start on the
    heaviest files that do not need it."""
    from collections import Counter

    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    files = sorted(dict.fromkeys(item.path for item in items), key=lambda f: -slow[f])  # stable: collection order
    needs = {item.path for item in items if "natural_smoke" in getattr(item, "fixturenames", ())}
    others = [f for f in files[1:] if f not in needs][:int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) - 1]
    order = files[:1] + others + [f for f in files[1:] if f not in others]
    rank = {f: i for i, f in enumerate(order)}
    items.sort(key=lambda item: rank[item.path])  # a stable sort: files keep their tests together, in order


def _data_root() -> Path:
    env = os.environ.get("BENCH_DATA")
    # absolute: tests that change folder (a notebook's) must still find it when BENCH_DATA=../shared/data
    return Path(env).resolve() if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "cifar-10-batches-bin").is_dir() and not (root / "cifar-10-batches-py").is_dir():
        pytest.fail(f"test data not found in {root}: set BENCH_DATA to a folder with CIFAR-10/MNIST/Fashion-MNIST")
    return root


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One artifact cache for the whole test run: under pytest-xdist each worker has its own base temp folder
    inside the run's, so the run's folder is the one they all see. bench locks each checkpoint while it trains,
    so the first worker that needs one trains it and the others wait for it and load it."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def session_results(tmp_path_factory, shared_cache) -> Path:
    """This worker's results folder; its cache is the run's shared one."""
    results = tmp_path_factory.mktemp("results")
    (results / "cache").symlink_to(shared_cache, target_is_directory=True)
    return results


@pytest.fixture(scope="session")
def env(data_root, session_results):
    """An Env on the repository's bench.toml with a results folder private to this test process, whose cache is
    the one every test worker of the run shares (shared_cache)."""
    from bench.runner import Env

    return Env.create(config=REPO / "bench.toml", data_root=data_root, device="cpu", results_dir=session_results)


@pytest.fixture(scope="session")
def natural_smoke(env):
    """The smoke-profile natural ResNet-32 on CIFAR-10 (trained once per session, ~1-2 min on 2 cores)."""
    from bench.runner import train

    return train("natural", "cifar10", "smoke", 0, env=env)


@pytest.fixture
def config_copy(tmp_path) -> Path:
    """A writable copy of bench.toml for tests that break it on purpose."""
    dst = tmp_path / "bench.toml"
    shutil.copy(REPO / "bench.toml", dst)
    return dst
