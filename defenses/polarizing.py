"""Polarizing front end (dissertation 001 §4.1, SPEC §4): L1-normalised learned filters + ternary quantiser in
front of a small CNN, trained in three stages with ramped bump regularisers (MNIST, Fashion-MNIST)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch.nn.functional as F
from pydantic import field_validator, model_validator

from bench import Defense, Field, Number, register_defense, set_on_modules

from ._adam_params import AdamOwnNetParams
from ._polarizing_layers import (PolarizingClassifier, PolarizingFrontEnd, PolarizingNet, bump_b1, bump_b2,
                                 front_statistics, parse_surrogate)


@register_defense("polarizing")
class Polarizing(Defense):
    """Polarizing front end: L1-normalised 5x5 filters + ternary quantiser, three bump-regularised stages."""

    non_differentiable = ("ternary quantiser of the front end (backward: identity by default)",)
    surrogates = ("identity", "smooth:S")
    # the audit's BPDA tries besides the default (autograd here is already the identity straight-through): a steep
    # smooth backward was the strongest on a Fashion-MNIST probe (see [attacks.pgd_linf_smooth32]), a mild one too
    audit_surrogates = ("smooth:4", "smooth:32")
    stage, bump = 3, 0.0  # set per epoch by start_epoch; stage 3 = quantised, no regulariser

    class Params(AdamOwnNetParams):
        filters: int = Field(25, gt=0, description="front-end filters")
        kernel_size: int = Field(5, gt=0, description="front-end filter size (odd; 'same' padding)")
        jump: Number = Field(0.5, gt=0, lt=1, description="quantiser thresholds ±j on y = (w*x)/||w||_1")
        sigma1: Number = Field(0.35, gt=0, description="width of bump B1 (stage 1)")
        sigma2: Number = Field(0.15, gt=0, description="width of bump B2 (stage 2)")
        bump_weight: Number = Field(1.0, ge=0, description="bump coefficient reached at the end of each ramp")
        stage_epochs: list[int] = Field([20, 20, 20], min_length=3, max_length=3,
                                        description="epochs of stage 1 (B1), stage 2 (B2), stage 3 (quantised, filters frozen)")
        danger_eps: Number = Field(0.3, ge=0, description="Linf budget whose danger zones |y ± j| < eps are reported")
        epochs: int = Field(60, ge=1, description="must equal sum(stage_epochs)")
        batch_size: int = Field(64, gt=0)
        milestones: list[int] = Field([50])
        augment: Literal["crop_flip", "none"] = "none"

        @field_validator("kernel_size")
        @classmethod
        def _odd(cls, v):
            if v % 2 == 0:
                raise ValueError(f"kernel_size {v} must be odd (the front end keeps the image size)")
            return v

        @field_validator("stage_epochs")
        @classmethod
        def _stages(cls, v):
            if min(v) < 0 or v[2] < 1:
                raise ValueError(f"stage_epochs {v}: stages 1-2 need >= 0 epochs and stage 3 (the quantised "
                                 f"classifier) >= 1")
            return v

        @model_validator(mode="after")
        def _epochs_match_stages(self):
            if self.epochs != sum(self.stage_epochs):
                raise ValueError(f"epochs = {self.epochs} but stage_epochs {self.stage_epochs} sum to "
                                 f"{sum(self.stage_epochs)}; set both consistently")
            return self

    def build_model(self) -> PolarizingNet:
        p, (c, h, _) = self.params, self.info.shape
        front = PolarizingFrontEnd(c, p.filters, p.kernel_size, p.jump)
        return PolarizingNet(front, PolarizingClassifier(p.filters, h, self.info.num_classes))

    def stage_of(self, epoch: int) -> tuple[int, int, int]:
        """(stage 1-3, first epoch of that stage, its length)."""
        start = 0
        for stage, length in enumerate(self.params.stage_epochs, 1):
            if epoch < start + length or stage == 3:
                return stage, start, length
            start += length
        raise AssertionError("unreachable")

    def start_epoch(self, model, epoch: int) -> None:
        super().start_epoch(model, epoch)
        stage, start, length = self.stage_of(epoch)
        self.stage = stage
        self.bump = self.params.bump_weight * (epoch - start) / length if stage < 3 else 0.0
        model.train_quantize = stage == 3
        model.front.conv.weight.requires_grad_(stage < 3)  # frozen filters simply get no gradient

    def batch_loss(self, model, x, y):
        p = self.params
        y_front, z = model.features(x)
        logits = model.classifier(z)
        loss = F.cross_entropy(logits, y)
        if self.stage == 1 and self.bump > 0:
            loss = loss + self.bump * bump_b1(y_front, p.sigma1)
        elif self.stage == 2 and self.bump > 0:
            loss = loss + self.bump * bump_b2(y_front, p.sigma2, p.jump)
        return loss, logits

    def epoch_metrics(self, model, monitor, history):
        x_mon = monitor[0]
        if len(x_mon) == 0:
            return {}
        device = next(model.parameters()).device
        stats = front_statistics(model.front, x_mon, self.params.danger_eps, device)
        row = {"stage": self.stage, "danger_frac": stats["danger_frac"]}
        stage, start, length = self.stage_of(self.epoch)
        if self.epoch == start + length - 1 or self.epoch == self.params.epochs - 1:
            row["hist"] = stats["hist"]  # y histogram at the end of each stage (plotted by `bench diagnose`)
        return row

    def training_flags(self, history):
        ends = {r["stage"]: r["danger_frac"] for r in history if "hist" in r}
        if not ends:
            return {}
        return {"danger_frac": round(history[-1]["danger_frac"], 5),
                "danger_frac_by_stage": {str(k): round(v, 5) for k, v in ends.items()}}

    @classmethod
    def surrogate_problem(cls, params, spec):
        if parse_surrogate(spec) is not None:
            return ""
        return (f"Defense 'polarizing' has no backward surrogate {spec!r}. Allowed: 'autograd' or 'identity' "
                f"(straight-through, the default), 'smooth:S' with S > 0 (derivative of ½[tanh(S(y−j)) + "
                f"tanh(S(y+j))], e.g. 'smooth:4')")

    @contextlib.contextmanager
    def surrogate(self, model, spec):
        self.require_surrogate(spec)
        steepness = parse_surrogate(spec)
        with set_on_modules(model, PolarizingFrontEnd, "steepness", steepness, "polarizing front end") as m:
            yield m

    def diagnose(self, trained, x, y, device, out_dir: Path, **_) -> dict:
        """Histograms of y after each training stage (PNG per stage) and the danger-zone fractions."""
        from ._diagnostics import plot_front_histogram

        p = self.params
        files, stages = [], {}
        for row in trained.meta.get("history", []):
            if "hist" in row:
                path = out_dir / f"hist_stage{row['stage']}_epoch{row['epoch']}.png"
                plot_front_histogram(row["hist"], p.jump, p.danger_eps, row["danger_frac"],
                                     f"after stage {row['stage']} (epoch {row['epoch']})", path)
                files.append(str(path))
                stages[f"stage{row['stage']}"] = row["danger_frac"]
        final = front_statistics(trained.model.front, x, p.danger_eps, device)
        path = out_dir / "hist_final_test.png"
        plot_front_histogram(final["hist"], p.jump, p.danger_eps, final["danger_frac"],
                             f"final model, {len(x)} test images", path)
        files.append(str(path))
        return {"danger_eps": p.danger_eps, "jump": p.jump, "danger_frac_monitor_by_stage": stages,
                "danger_frac_test_final": final["danger_frac"], "files": files}
