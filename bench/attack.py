"""The Attack plug-in base, the model-pass counter and the per-sample result every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from .errors import BenchError
from .params import Number, StrictModel
from .pgd import norm_of  # the norm geometry lives with the engine


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
    """What an attack may know besides the model: the defense's traits, the device, a seeded generator, and what
    the harness lends it (the artifact cache, the test split, other bench.toml entries) through narrow methods."""

    defense: Any
    device: torch.device
    seed: int
    batch_size: int
    eval_model: nn.Module | None = None  # the model whose prediction counts (an ensemble for stochastic defenses)
    warnings: list[str] = field(default_factory=list)
    dataset: str = ""
    profile: str = ""
    info: dict = field(default_factory=dict)  # attack-specific provenance copied into the cell manifest
    # filled per batch by attacks on the PGD engine (bench.pgd.run_pgd(trace=ctx.trace)) for bench.verdicts
    trace: dict | None = None
    # the positions (in the cell's seeded test subset) of the points in the batch being attacked, set by the
    # harness per batch: attacks draw each point's random start from its own seed (point_seeds), so a point's
    # result does not depend on which other points share its batch (what lets a suite attack only survivors)
    points: torch.Tensor | None = None
    # the positions in the dataset's test split of the cell's seeded test subset (the batch's: test_positions())
    subset_index: torch.Tensor | None = None
    # folders the harness resolved for attacks that read data of their own (the corruptions root: --corruptions-root,
    # BENCH_CORRUPTIONS, settings.corruptions_root), by name
    roots: dict = field(default_factory=dict)

    # what the harness lends an attack, filled by bench.runner.attack_context (None outside a cell: an attack
    # that needs one says so through `_lent`)
    cache: Any = None  # the run's bench.store.ArtifactCache: what an attack computes once and reuses (kinds it names)
    test_split: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None  # the whole test split (uint8, labels)
    surrogates: Callable[[str], Any] | None = None  # defense entry -> trained (or cached) defense; trained_defense()
    attack_entries: Callable[[str], Any] | None = None  # attack entry -> its resolved config; attack_entry()

    def _lent(self, value, what: str):
        if value is None:
            raise BenchError(f"This attack needs {what} from the harness; run it through bench.run / run_cell "
                             f"(bench.runner.attack_context builds a context with it).")
        return value

    def trained_defense(self, name: str):
        """Defense entry `name` of bench.toml trained (or loaded from the cache) at this dataset, profile and seed:
        a bench.runner.TrainedDefense (.defense, .model in eval mode, .meta, .key = its checkpoint key)."""
        return self._lent(self.surrogates, f"the trained defense '{name}'")(name)

    def attack_entry(self, name: str):
        """Attack entry `name` of bench.toml resolved at this dataset and profile (.cls, .params, .plugin, .as_dict())."""
        return self._lent(self.attack_entries, f"the attack entry '{name}'")(name)

    def read_test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's whole test split: uint8 images (N, C, H, W) and labels, on the CPU."""
        return self._lent(self.test_split, "the test split")()

    def artifact_cache(self):
        """The run's artifact cache (bench.store.ArtifactCache: has / load / save / path by kind and key)."""
        return self._lent(self.cache, "the artifact cache")

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The labels `model` predicts for x (on the CPU), in batches of `batch_size` on the context's device."""
        n = max(1, self.batch_size)
        parts = [model(x[i:i + n].to(self.device)).argmax(1).cpu() for i in range(0, len(x), n)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def on(self, defense, eval_model: nn.Module | None) -> "AttackContext":
        """A context for attacking another model (a transfer attack's surrogate) in the same cell: the same
        device, seed, batch size and harness services; its own warnings, provenance and trace."""
        return AttackContext(defense=defense, device=self.device, seed=self.seed, batch_size=self.batch_size,
                             eval_model=eval_model, dataset=self.dataset, profile=self.profile, cache=self.cache,
                             test_split=self.test_split, surrogates=self.surrogates,
                             attack_entries=self.attack_entries, roots=self.roots)

    def test_positions(self) -> torch.Tensor:
        """The positions in the dataset's test split of the points of the current batch (what data indexed by test
        image, such as CIFAR-10-C, is looked up by)."""
        if self.points is None or self.subset_index is None:
            return self._lent(None, "the test-split positions of the batch")
        return self.subset_index[self.points.cpu()]

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + salt)

    def point_seeds(self, salt: int = 0) -> list[int] | None:
        """One seed per point of the current batch, from (seed, the point's position, salt); None outside a cell."""
        if self.points is None:
            return None
        return [(self.seed * 1_000_003 + salt) * 1_000_033 + 7_927 * int(p) for p in self.points.tolist()]


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
    # True for a natural distribution shift (common corruptions): every test point is transformed and judged, clean
    # errors included, and robust_acc is the plain accuracy on the shifted images (False: only the correctly
    # classified points are attacked, robust = correct and not fooled)
    every_point: ClassVar[bool] = False

    @classmethod
    def inputs(cls, params: AttackParams, dataset: str, roots: dict) -> dict:
        """What the attack reads besides bench.toml, the model and the dataset (released data files, a library that
        makes its images), as JSON: it joins the cell's key, so other inputs make another cell. Raise BenchError
        (one paragraph naming what is missing) when it cannot run: the harness asks before any work. {} = nothing."""
        return {}

    def bind(self, attack_entry: Callable[[str], Any]) -> "Attack":
        """Resolve what this attack takes from other attack entries of bench.toml (attack_entry(name) -> resolved
        entry at the same dataset and profile), so `norm` and `eps` are known before `run`: a suite checks its
        stages' threat model and the scheduler fills the planned row with them. Default: nothing to resolve."""
        return self

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
    """Per-sample norm of a batch of perturbations, as the budget checker measures it. "l0" (minimum-norm attacks
    only; no PGD geometry) counts the changed coordinates, each channel of a pixel apart, as FMN-L0 minimises."""
    if norm == "l0":
        return (delta.flatten(1) != 0).sum(1).to(delta.dtype)
    return norm_of(norm).measure(delta)


__all__ = ["Attack", "AttackParams", "AttackContext", "AttackOutput", "PassCounter", "Number", "Field",
           "perturbation_norm"]
