from pathlib import Path

import torch
from conftest import tiny_natural

from bench import Attack, AttackOutput, register_attack
from bench.exact import exact_fp32
from bench.runner import run_cell

REPO = Path(__file__).resolve().parent.parent
SEEN: list[tuple] = []


def _flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic


@register_attack("arithmetic_spy")
class ArithmeticSpy(Attack):
    """Test only: records the arithmetic flags an attack runs under and changes nothing."""

    def run(self, model, x, y, ctx):
        SEEN.append(_flags())
        return AttackOutput(x_adv=x.clone(), fooled=torch.zeros(len(y), dtype=torch.bool))


def _as_gpu_training_leaves_them(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)


def test_exact_fp32_switches_off_tf32_and_autotuning_and_restores_them(monkeypatch):
    _as_gpu_training_leaves_them(monkeypatch)
    before = _flags()
    with exact_fp32():
        assert _flags() == (False, False, False, True)
    assert _flags() == before


def test_attacks_and_verdicts_run_in_exact_fp32(data_root, tmp_path, monkeypatch):
    # a natural MNIST net trained in seconds (the flags, not the model, are under test)
    from bench.runner import Env

    config = tmp_path / "bench.toml"
    config.write_text((REPO / "bench.toml").read_text() + "\n" + tiny_natural("exact_net"))
    env = Env.create(config=config, data_root=data_root, device="cpu", results_dir=tmp_path / "results")
    _as_gpu_training_leaves_them(monkeypatch)
    before = _flags()
    SEEN.clear()
    row = run_cell(env, "exact_net", "arithmetic_spy", "mnist", "smoke", 0, n_test=20, force=True)
    assert SEEN and all(flags == (False, False, False, True) for flags in SEEN)
    assert _flags() == before
    assert float(row["robust_acc"]) == float(row["clean_acc"])  # the spy fooled nothing


def test_training_hands_back_the_callers_autotuning_flag(monkeypatch):
    # fit switches cuDNN autotuning on for a GPU training; a surrogate trained inside an attack must not leave
    # it on for the rest of the attack
    from bench.training import fit

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    def boom(*args):
        torch.backends.cudnn.benchmark = True  # as _fit does on a GPU
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.training._fit", boom)
    try:
        fit(None, None, None, None, None, "cpu", 0)
    except KeyboardInterrupt:
        pass
    assert torch.backends.cudnn.benchmark is False
