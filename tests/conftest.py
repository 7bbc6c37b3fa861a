"""Shared fixtures: the real datasets (BENCH_DATA or ../shared/data) and one smoke-trained natural model
per test session, cached in a session folder so every test module reuses it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("BENCH_PROGRESS", "0")


def _data_root() -> Path:
    env = os.environ.get("BENCH_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "cifar-10-batches-bin").is_dir() and not (root / "cifar-10-batches-py").is_dir():
        pytest.fail(f"test data not found in {root}: set BENCH_DATA to a folder with CIFAR-10/MNIST/Fashion-MNIST")
    return root


@pytest.fixture(scope="session")
def session_results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def env(data_root, session_results):
    """An Env on the repository's bench.toml with a session-private results folder and cache."""
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
