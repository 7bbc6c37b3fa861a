import torch

from bench import Attack, AttackOutput, register_attack
from bench.exact import exact_fp32
from bench.runner import run_cell

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


def test_exact_fp32_switches_off_tf32_and_autotuning_and_restores_them():
    torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    before = _flags()
    with exact_fp32():
        assert _flags() == (False, False, False, True)
    assert _flags() == before


def test_attacks_and_verdicts_run_in_exact_fp32(env, natural_smoke):
    torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True  # as training on a GPU leaves them
    before = _flags()
    SEEN.clear()
    row = run_cell(env, "natural", "arithmetic_spy", "cifar10", "smoke", 0, n_test=20, force=True)
    assert SEEN and all(flags == (False, False, False, True) for flags in SEEN)
    assert _flags() == before
    assert float(row["robust_acc"]) == float(row["clean_acc"])  # the spy fooled nothing
