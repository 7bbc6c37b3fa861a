import os

import pytest
import torch

from bench import store
from bench.store import ArtifactCache, ResultsStore


def _row(cell, acc="0.5"):
    return {"cell": cell, "dataset": "cifar10", "defense": "d", "attack": "a", "status": "ok", "robust_acc": acc}


def test_append_keeps_rows_and_writes_manifest(tmp_path):
    s = ResultsStore(tmp_path)
    s.append(_row("c1"), {"x": 1})
    s.append(_row("c2"), {"x": 2})
    assert [r["cell"] for r in s.rows()] == ["c1", "c2"]
    assert s.has("c1") and not s.has("c3")
    assert (tmp_path / "runs" / "c2.json").exists()


def test_crash_during_write_leaves_previous_rows_intact(tmp_path, monkeypatch):
    s = ResultsStore(tmp_path)
    s.append(_row("c1"), {})
    before = s.csv_path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        s.append(_row("c2"), {})
    monkeypatch.undo()
    assert s.csv_path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_unknown_column_is_refused(tmp_path):
    with pytest.raises(ValueError):
        ResultsStore(tmp_path).append({**_row("c"), "bogus": 1}, {})


def test_artifacts_round_trip_with_weights_only(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.save("checkpoints", "k", {"model": {"w": torch.ones(2)}}, {"made_from": "test"})
    payload, meta = cache.load("checkpoints", "k")
    assert torch.equal(payload["model"]["w"], torch.ones(2)) and meta == {"made_from": "test"}


def test_content_hash_is_order_independent():
    assert store.content_hash({"a": 1, "b": 2}) == store.content_hash({"b": 2, "a": 1})


class _NotATensor:  # pickled by reference: weights_only refuses it as a global not allowed by default
    pass


def test_a_refused_pickle_quotes_torchs_reason_without_its_advice_or_terminal_codes(tmp_path):
    """torch's refusal of a non-tensor object bolds a sentence with ANSI codes and suggests weights_only=False:
    bench's message (cache and user weights alike) keeps only what was refused."""
    import io

    import torch

    from bench.store import BenchError, StoreError, _torch_load_bytes, read_weights

    buf = io.BytesIO()
    torch.save({"model": _NotATensor()}, buf)
    path = tmp_path / "w.pt"
    path.write_bytes(buf.getvalue())
    errors = []
    for load, kind in ((lambda: _torch_load_bytes(buf.getvalue(), path), StoreError), (lambda: read_weights(path), BenchError)):
        with pytest.raises(kind) as e:
            load()
        errors.append(str(e.value))
    for text in errors:
        assert str(path) in text and "GLOBAL" in text and "_NotATensor" in text, text
        assert "\x1b" not in text and "weights_only` set to `False" not in text and "weights_only=False" not in text, text
