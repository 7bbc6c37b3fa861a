import gzip
import shutil

import pytest
import torch

from bench import data
from bench.errors import DataError


def test_cifar10_binary_matches_official_facts(data_root):
    xtr, ytr = data.load_split("cifar10", "train", str(data_root))
    xte, yte = data.load_split("cifar10", "test", str(data_root))
    assert xtr.shape == (50000, 3, 32, 32) and xte.shape == (10000, 3, 32, 32) and xtr.dtype == torch.uint8
    assert yte[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(ytr).tolist() == [5000] * 10
    mean = xtr[:, :, :, :].float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)


@pytest.mark.parametrize("name,counts0", [("mnist", 5923), ("fashion_mnist", 6000)])
def test_idx_gz(data_root, name, counts0):
    x, y = data.load_split(name, "train", str(data_root))
    assert x.shape == (60000, 1, 28, 28) and torch.bincount(y)[0].item() == counts0
    xt, _ = data.load_split(name, "test", str(data_root))
    assert xt.shape == (10000, 1, 28, 28)


def test_raw_uncompressed_idx(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.IDX_FILES["test"]:
        with gzip.open(data_root / "MNIST" / "raw" / f"{stem}.gz") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    x, y = data.load_split("mnist", "test", str(tmp_path), download=False)
    x_ref, y_ref = data.load_split("mnist", "test", str(data_root))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_corrupt_cifar_is_detected(tmp_path, data_root):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    blob = bytearray((data_root / "cifar-10-batches-bin" / "test_batch.bin").read_bytes())
    blob[100] ^= 0xFF
    (folder / "test_batch.bin").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="md5"):
        data.load_split("cifar10", "test", str(tmp_path), download=False)


def test_missing_data_says_where_and_how(tmp_path, monkeypatch):
    def no_network(root, name):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download", no_network)
    with pytest.raises(DataError) as e:
        data.load_split("cifar10", "test", str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "nowhere" in msg and "BENCH_DATA" in msg and "network unreachable" in msg


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "env"))
    assert data.resolve_data_root(tmp_path / "flag", "cfg") == (tmp_path / "flag").resolve()
    assert data.resolve_data_root(None, "cfg") == (tmp_path / "env").resolve()
    monkeypatch.delenv("BENCH_DATA")
    assert data.resolve_data_root(None, tmp_path / "cfg") == (tmp_path / "cfg").resolve()


def test_subsets_are_seeded_and_deterministic():
    a = data.subset_indices(10000, 100, 0, "cifar10/test")
    assert torch.equal(a, data.subset_indices(10000, 100, 0, "cifar10/test"))
    assert not torch.equal(a, data.subset_indices(10000, 100, 1, "cifar10/test"))
    assert len(set(a.tolist())) == 100
