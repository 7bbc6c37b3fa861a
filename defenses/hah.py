"""HaH blocks on VGG-16 (dissertation 001 ch. 5, SPEC §5) and the plain VGG-16 trained with the same recipe.

The HaH loss of block k must train only conv k (no HaH gradient into earlier layers, against 'cheating'). Each
HaH conv returns a second copy of its output whose gradient reaches only its own weight (`_WeightOnlyTap`), so
cross-entropy and all HaH terms come from one forward and one backward."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator

from bench import Defense, Field, Number, register_defense

from ._adam_params import AdamOwnNetParams
from ._hah_layers import VGG, blockwise_stats, hah_objective

PAPER_ALPHA = [4.5e-3, 2.5e-3, 1.3e-3, 1e-3, 8e-4, 5e-4]


class VGGParams(AdamOwnNetParams):
    width: Number = Field(1.0, gt=0, le=1, description="channel multiplier of VGG-16 (1 = 64..512 channels)")
    epochs: int = Field(100, ge=0)
    milestones: list[int] = Field([60, 80])


@register_defense("vgg16")
class PlainVGG16(Defense):
    """VGG-16 with implicit weight normalisation, conv → ReLU → BN everywhere (the HaH chapter's baseline)."""

    Params = VGGParams

    def build_model(self) -> VGG:
        return VGG(self.info, width=self.params.width)

    def diagnose(self, trained, x, y, device, out_dir: Path, noise_sigma: float = 0.1) -> dict:
        """Per-block squared Hoyer sparsity and SNR (dB) under Gaussian noise (figures 5.4 and 5.6); the command
        plots every model's numbers in one figure."""
        gen = torch.Generator().manual_seed(trained.meta.get("seed", 0))
        return {"blockwise": blockwise_stats(trained.model, x, noise_sigma, gen, device), "files": []}

    @classmethod
    def compare_diagnostics(cls, reports: dict[str, dict], out_dir: Path, noise_sigma: float) -> dict:
        """One figure of the block-wise numbers of every model given (HaH and VGG-16 side by side)."""
        blockwise = {name: r["blockwise"] for name, r in reports.items() if "blockwise" in r}
        if not blockwise:
            return {}
        from ._diagnostics import plot_blockwise

        path = out_dir / f"blockwise_{'_'.join(blockwise)}.png"
        plot_blockwise(blockwise, noise_sigma, path)
        return {"blockwise_plot": str(path)}


@register_defense("hah")
class HaH(PlainVGG16):
    """VGG-16 whose first 6 convs are HaH blocks (divisive norm, top-20 % threshold, Hebbian/anti-Hebbian loss)."""

    _hah_sum: torch.Tensor | None = None  # per-block HaH objectives summed over the epoch's batches (for the log)
    _batches = 0

    class Params(VGGParams):
        hah_blocks: int = Field(6, ge=0, le=13, description="leading convs built as HaH blocks")
        normalization: Literal["divisive", "batchnorm"] = Field(
            "divisive", description="normalisation in HaH blocks ('batchnorm' = the ablation)")
        divisive_sigma: Number = Field(0.1, ge=0, le=1, description="σ of the divisive normalisation")
        threshold_keep: Number = Field(0.2, gt=0, le=1, description="fraction of positions kept per channel "
                                                                    "(1 = no thresholding, the ablation)")
        hah_loss: bool = Field(True, description="add the HaH loss (false = the 'no HaH loss' ablation)")
        hah_k: Number = Field(0.1, gt=0, le=1, description="K as a fraction of the block's channels")
        hah_lambda: Number = Field(0.1, ge=0, description="anti-Hebbian weight λ (paper 0.1)")
        hah_alpha: list[Number] = Field(PAPER_ALPHA, description="HaH loss weight α of each HaH block")

        @model_validator(mode="after")
        def _alpha_per_block(self):
            if self.hah_loss and len(self.hah_alpha) != self.hah_blocks:
                raise ValueError(f"hah_alpha has {len(self.hah_alpha)} weights for {self.hah_blocks} HaH blocks; "
                                 f"give one per block")
            if any(a < 0 for a in self.hah_alpha):
                raise ValueError(f"hah_alpha {self.hah_alpha}: weights must be >= 0")
            return self

    def build_model(self) -> VGG:
        p = self.params
        return VGG(self.info, width=p.width, hah_blocks=p.hah_blocks, normalization=p.normalization,
                   sigma=p.divisive_sigma, keep=p.threshold_keep)

    def start_epoch(self, model, epoch: int) -> None:
        super().start_epoch(model, epoch)
        self._hah_sum, self._batches = None, 0

    def batch_loss(self, model, x, y):
        p = self.params
        if not p.hah_loss:
            return super().batch_loss(model, x, y)
        acts: list[torch.Tensor] = []
        logits = model(x, hah_out=acts)
        terms = [hah_objective(a, p.hah_k, p.hah_lambda) for a in acts]
        loss = F.cross_entropy(logits, y) - sum(alpha * t for alpha, t in zip(p.hah_alpha, terms))
        values = torch.stack([t.detach() for t in terms])
        self._hah_sum = values if self._hah_sum is None else self._hah_sum + values
        self._batches += 1
        return loss, logits

    def epoch_metrics(self, model, monitor, history):
        if not self._batches:
            return {}
        return {"hah_terms": [round(v, 5) for v in (self._hah_sum / self._batches).tolist()]}
