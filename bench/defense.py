"""The Defense plug-in base. A defense builds its model (inputs in [0, 1]) and says how to make the training
loss for one batch; the shared trainer in `bench.training` does everything else."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .nets import build_classifier
from .params import Number, StrictModel


@contextlib.contextmanager
def set_on_modules(model: nn.Module, kind: type, attr: str, value, what: str):
    """Set `attr = value` on every `kind` module inside `model` (also behind wrappers such as a PassCounter) for
    the duration of the block, then restore each one's own value: how a defense swaps in a backward surrogate."""
    from .errors import BenchError

    mods = [m for m in model.modules() if isinstance(m, kind)]
    if not mods:
        raise BenchError(f"surrogate(): the model given contains no {what}.")
    before = [getattr(m, attr) for m in mods]
    for m in mods:
        setattr(m, attr, value)
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            setattr(m, attr, b)


@dataclass(frozen=True)
class DefenseContext:
    """What the harness tells a defense about the run it is built in (`defense.context`, set by bench.runner
    before `build_model`). A defense built outside the harness (a test, a notebook) has the empty default: no
    cache (what it would cache is computed in memory), the default data folder, no entry name."""

    entry_name: str = ""  # the bench.toml entry the defense was built from ("evaluate" for bench.evaluate)
    cache: Any = None  # the run's bench.store.ArtifactCache: artifacts built before training (a learned dictionary)
    data_root: Path | None = None  # where the datasets are (bench.data.resolve_data_root() when None)
    config_root: Path | None = None  # where relative paths of bench.toml start (a ready-made model's files)
    weights_root: Path | None = None  # where external zoo entries' files are (bench.external.resolve_weights_root() when None)


class TrainParams(StrictModel):
    """Training recipe shared by every trained defense (the `paper` profile holds the papers' values)."""

    arch: str = Field("auto", description="architecture; 'auto' = the dataset's default in [datasets.*]")
    epochs: int = Field(70, ge=0)
    n_train: int = Field(0, ge=0, description="train on a seeded subset of this size (0 = all)")
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Number = Field(0.05, gt=0, description="peak LR for 'cyclic', initial LR otherwise")
    momentum: Number = Field(0.9, ge=0, lt=1)
    weight_decay: Number = Field(5e-4, ge=0)
    schedule: Literal["cyclic", "multistep", "constant"] = "cyclic"
    milestones: list[int] = Field(default_factory=list, description="epochs where 'multistep' multiplies the LR by gamma")
    gamma: Number = Field(0.1, gt=0)
    augment: Literal["crop_flip", "none"] = "crop_flip"
    monitor_n: int = Field(500, ge=0, description="test images for the per-epoch clean-accuracy log")
    amp: bool = Field(False, description="CUDA only: bfloat16 autocast for the training step (ignored on CPU)")
    channels_last: bool = Field(False, description="channels-last memory format for model and batches (faster convs on GPU)")

    # added after checkpoints existed: out of the serialized recipe while at these values (StrictModel)
    omit_at_default: ClassVar[dict] = {"amp": False, "channels_last": False}


class DefenseParams(TrainParams):
    pass


class Defense:
    """Subclass, set `Params`, decorate with @register_defense("name"). Override `build_model` for a new
    architecture, `batch_loss` for a new training objective, `epoch_metrics` to log more per epoch."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    stochastic: ClassVar[bool] = False  # attacks must use EOT; evaluation may ensemble
    non_differentiable: ClassVar[tuple[str, ...]] = ()  # parts whose autograd gradient is masked or zero
    surrogates: ClassVar[tuple[str, ...]] = ()  # backward surrogates attacks may select by name
    # concrete surrogates `bench audit` tries (instances of templates such as 'smooth:S'); default: the concrete
    # entries of `surrogates`
    audit_surrogates: ClassVar[tuple[str, ...]] = ()
    progress: float = 0.0  # epochs of training done so far (fractional), set by the training loop before each batch
    context: DefenseContext = DefenseContext()  # the run it is built in: set by bench.runner before build_model

    def __init__(self, params: DefenseParams, dataset_info, dataset_arch: str = "resnet32"):
        self.params = params
        self.info = dataset_info
        self.arch = params.arch if params.arch != "auto" else dataset_arch

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def build_model(self) -> nn.Module:
        return build_classifier(self.arch, self.info)

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called before each training epoch (0-based): staged recipes switch regularisers or freeze layers here."""
        self.epoch = epoch

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss, logits on the batch the model was trained on) for one training batch."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The model whose predictions count (clean and adversarial); stochastic defenses return an ensemble."""
        return model

    def epoch_metrics(self, model: nn.Module, monitor: tuple[torch.Tensor, torch.Tensor], history: list[dict]) -> dict:
        """Extra per-epoch numbers for the training log (e.g. PGD accuracy of an adversarially trained model)."""
        return {}

    def training_flags(self, history: list[dict]) -> dict:
        """Flags stored with the checkpoint and shown in results (e.g. {'collapsed': True})."""
        return {}

    @classmethod
    def surrogate_problem(cls, params: DefenseParams, spec: str) -> str:
        """Why `spec` names no backward surrogate of this defense, or "" (it does, or only `surrogate` can tell).
        Asked when a cell is resolved, so a misspelled `backward` stops a run before anything is trained or
        written. A defense that keeps the base `surrogate` has none beyond plain autograd; one with a surrogate
        grammar overrides this."""
        if spec in (None, "", "autograd") or cls.surrogate is not Defense.surrogate:
            return ""
        return (f"Defense '{cls.name}' has no backward surrogate {spec!r}: it is plainly differentiable "
                f"(allowed: 'autograd')")

    def require_surrogate(self, spec: str | None) -> None:
        """Raise `surrogate_problem`'s answer for `spec` as a one-paragraph error (for `surrogate` overrides)."""
        problem = self.surrogate_problem(self.params, spec)
        if problem:
            from .errors import BenchError

            raise BenchError(problem + ".")

    @contextlib.contextmanager
    def surrogate(self, model: nn.Module, spec: str | None):
        """Switch the model's backward pass to a named surrogate; forward values must not change."""
        self.require_surrogate(spec)
        yield model

    # `bench diagnose`: a defense opts in with `diagnose(self, trained, x, y, device, out_dir, noise_sigma=...)`,
    # returning its numbers (and "files": the figures it wrote); the command then calls each distinct
    # compare_diagnostics of the defenses given once, with every report, for figures across models
    @classmethod
    def compare_diagnostics(cls, reports: dict[str, dict], out_dir: Path, noise_sigma: float) -> dict:
        """Figures across the reports of one `bench diagnose` run; returns what goes into its summary."""
        return {}
