"""What the adversarially trained defenses (pgd_at, trades, rfgsm) share: the training-time inner maximisation
on the PGD engine's `step`, the per-epoch PGD/FGSM monitor and the catastrophic-overfitting rule.

Training attacks keep the LAST iterate of every point (Madry, TRADES, Wong et al.), not the first fooling
iterate that `bench.pgd.run_pgd` keeps for evaluation; so training uses the engine's `step` / `random_start`
pieces, and the monitor uses `run_pgd` itself."""
from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from bench import Defense, DefenseParams, Field, Number, PGDSettings, StepSize, run_pgd, step, step_value

MONITOR_SEED = 0  # the same start noise every epoch, so successive monitor numbers are comparable
MONITOR_BATCH = 250


class AdversarialParams(DefenseParams):
    eps: Number = Field(8 / 255, gt=0, description="Linf training budget (pixels in [0, 1])")
    steps: int = Field(10, ge=1, description="signed-gradient steps of the inner maximisation")
    step_size: StepSize = Field("1/255", description="inner step: absolute (\"1/255\") or relative (\"eps/30\")")
    monitor_attack_n: int = Field(200, ge=0, description="monitor images attacked after every epoch for pgd_acc / "
                                                         "fgsm_acc (0 = no robustness log, no collapse check)")
    monitor_steps: int = Field(10, ge=1, description="PGD steps of the per-epoch monitor (step 2.5*eps/steps, random start)")
    collapse_drop: Number = Field(0.2, gt=0, le=1, description="flag 'collapsed' when monitor PGD accuracy falls by "
                                                               "more than this in one epoch while FGSM accuracy holds")
    collapse_gap: Number = Field(0.4, gt=0, le=1, description="... or when FGSM accuracy exceeds PGD accuracy by more "
                                                              "than this after the last epoch")

    eps_warmup_epochs: Number = Field(0, ge=0, description="ramp the training budget linearly from 0 to eps over "
                                                         "this many epochs, per batch (0 = full eps from the start; "
                                                         "monitor and evaluation always use the full eps)")

    omit_at_default: ClassVar[dict] = {**DefenseParams.omit_at_default, "eps_warmup_epochs": 0}

    def inner_settings(self, progress: float | None = None) -> PGDSettings:
        """The training attack after `progress` epochs (None = fully ramped); a relative step size follows the
        ramped budget."""
        eps = self.eps
        if progress is not None and self.eps_warmup_epochs > 0:
            eps = self.eps * min(1.0, progress / self.eps_warmup_epochs)
        return PGDSettings(norm="linf", eps=eps, steps=self.steps,
                           step_size=step_value(self.step_size, eps, self.steps))


def maximize(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, loss_sum: Callable[[torch.Tensor], torch.Tensor],
             s: PGDSettings, train_mode: bool) -> torch.Tensor:
    """x + delta after `s.steps` ascent steps of `loss_sum(model(x + delta))` from `delta` (last iterate), with
    the model in train or eval mode for the inner loop and restored afterwards. Parameters get no gradient."""
    was_training = model.training
    model.train(train_mode)
    try:
        delta = delta.detach()
        for _ in range(s.steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_sum(model(x + delta)), delta)
            delta = step(delta.detach(), grad, x, s).detach()
    finally:
        model.train(was_training)
    return (x + delta).detach()


def collapse_flags(history: list[dict], drop: float, gap: float) -> dict:
    """The catastrophic-overfitting rule on the monitor log (Wong et al. 2020: PGD accuracy collapses within an
    epoch while FGSM accuracy stays high). Collapsed if
      (a) at some epoch PGD accuracy fell by more than `drop` since the previous epoch while FGSM accuracy fell
          by less than drop / 2 (a model that merely diverges loses both), or
      (b) after the last epoch FGSM accuracy exceeds PGD accuracy by more than `gap` (single-step attacks are
          masked: the run never became robust, or collapsed gradually).
    {} when nothing was monitored."""
    rows = [r for r in history if _finite(r.get("pgd_acc")) and _finite(r.get("fgsm_acc"))]
    if not rows:
        return {}
    for prev, cur in zip(rows, rows[1:]):
        if prev["pgd_acc"] - cur["pgd_acc"] > drop and cur["fgsm_acc"] > prev["fgsm_acc"] - drop / 2:
            return {"collapsed": True,
                    "reason": f"catastrophic overfitting at epoch {cur['epoch']}: monitor PGD accuracy "
                              f"{prev['pgd_acc']:.1%} -> {cur['pgd_acc']:.1%} while FGSM accuracy "
                              f"{prev['fgsm_acc']:.1%} -> {cur['fgsm_acc']:.1%}"}
    last = rows[-1]
    if last["fgsm_acc"] - last["pgd_acc"] > gap:
        return {"collapsed": True,
                "reason": f"gradient masking after epoch {last['epoch']}: monitor FGSM accuracy {last['fgsm_acc']:.1%} "
                          f"vs PGD accuracy {last['pgd_acc']:.1%} (gap > {gap:.0%})"}
    return {"collapsed": False}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: PGDSettings) -> float:
    """Fraction of (x, y) classified correctly and not fooled by `run_pgd` with settings `s` (model as given)."""
    gen = torch.Generator().manual_seed(MONITOR_SEED)
    robust = 0
    for i in range(0, len(x), MONITOR_BATCH):
        xb, yb = x[i:i + MONITOR_BATCH], y[i:i + MONITOR_BATCH]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        if correct.any():
            _, fooled = run_pgd(model, xb[correct], yb[correct], s, gen)
            robust += int((~fooled).sum())
    return robust / len(x)


class AdversarialDefense(Defense):
    """Base of the adversarially trained defenses; subclasses implement `batch_loss` with `maximize`."""

    Params = AdversarialParams
    inner_train_mode: ClassVar[bool] = True  # BatchNorm mode during the inner maximisation

    def epoch_metrics(self, model, monitor, history):
        p = self.params
        n = min(p.monitor_attack_n, len(monitor[0]))
        if n == 0:
            return {}
        device = next(model.parameters()).device
        x, y = monitor[0][:n].to(device), monitor[1][:n].to(device)
        pgd = PGDSettings(norm="linf", eps=p.eps, steps=p.monitor_steps, step_size=2.5 * p.eps / p.monitor_steps)
        fgsm = PGDSettings(norm="linf", eps=p.eps, steps=1, step_size=p.eps, random_start=False)
        was_training = model.training
        model.eval()
        try:
            judged = self.evaluation_model(model)
            return {"pgd_acc": robust_accuracy(judged, x, y, pgd), "fgsm_acc": robust_accuracy(judged, x, y, fgsm)}
        finally:
            model.train(was_training)

    def training_flags(self, history):
        return collapse_flags(history, self.params.collapse_drop, self.params.collapse_gap)
