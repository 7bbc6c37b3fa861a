"""The Attack plug-in base, the model-pass counter and the per-sample result every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from .params import Number, StrictModel


class AttackParams(StrictModel):
    batch_size: int = Field(0, ge=0, description="points per attack batch (0 = the profile's eval_batch_size)")


class PassCounter(nn.Module):
    """Wraps a model and counts images through forward and backward passes (the attack-cost unit)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_images = 0
        self.backward_images = 0

    def forward(self, x):
        out = self.model(x)
        n = x.shape[0]
        self.forward_images += n
        if out.requires_grad:
            def count(grad, n=n):
                self.backward_images += n
                return grad
            out.register_hook(count)
        return out


@dataclass
class AttackContext:
    """What an attack may know besides the model: the defense's traits, the device and a seeded generator."""

    defense: Any
    device: torch.device
    seed: int
    batch_size: int
    eval_model: nn.Module | None = None  # the model whose prediction counts (an ensemble for stochastic defenses)
    warnings: list[str] = field(default_factory=list)
    dataset: str = ""
    profile: str = ""
    env: Any = None  # bench.runner.Env: lets transfer attacks train or load their surrogate defenses
    info: dict = field(default_factory=dict)  # attack-specific provenance copied into the cell manifest
    # filled per batch by attacks on the PGD engine (bench.pgd.run_pgd(trace=ctx.trace)) for bench.verdicts
    trace: dict | None = None

    def trained_defense(self, name: str):
        """A surrogate defense from bench.toml, trained or loaded from the cache (bench.runner.TrainedDefense)."""
        from .runner import train

        return train(name, self.dataset, self.profile, self.seed, env=self.env)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + salt)


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    fooled: torch.Tensor  # the attack's own verdict; the harness re-checks every point in fp32
    queries: torch.Tensor | None = None  # per-sample model queries (decision/score-based attacks)
    extra: dict = field(default_factory=dict)


class Attack:
    """Subclass, set `Params`, decorate with @register_attack("name"), implement `run`.

    `kind = "bounded"`: the result is robust accuracy at (norm, eps) and the harness checks the budget.
    `kind = "min_norm"`: the result is the perturbation norm needed to fool each point."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[AttackParams]] = AttackParams
    kind: ClassVar[Literal["bounded", "min_norm"]] = "bounded"
    # True for white-box attacks that follow the target model's input gradients and whose AttackOutput.fooled is
    # their own verdict on the target: bench.verdicts then checks those gradients and what the attack returned
    gradient_based: ClassVar[bool] = False

    def eot_passes(self) -> int:
        """Stochastic forward passes averaged per gradient step (EOT); 1 = none."""
        return int(getattr(self.params, "eot_samples", 1))

    def __init__(self, params: AttackParams):
        self.params = params

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @property
    def norm(self) -> str:
        return getattr(self.params, "norm", "")

    @property
    def eps(self) -> float | None:
        return getattr(self.params, "eps", None)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext) -> AttackOutput:
        raise NotImplementedError


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    raise ValueError(f"unknown norm {norm!r}")


__all__ = ["Attack", "AttackParams", "AttackContext", "AttackOutput", "PassCounter", "Number", "Field",
           "perturbation_norm"]
