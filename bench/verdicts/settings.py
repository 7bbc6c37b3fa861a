"""[verdicts] and [verdicts.audit] of bench.toml: the thresholds of every check (each commented there with its
reason), validated at load."""
from __future__ import annotations

from pydantic import Field

from ..params import Number, StrictModel


class AuditSettings(StrictModel):
    """[verdicts.audit]: the expensive checks and adaptations of `bench audit` (entries of bench.toml)."""

    budget_factors: list[Number] = Field([0.5, 2.0], description="eps multipliers of the budget-monotonicity check")
    effort_factor: int = Field(5, ge=2, description="x steps and x restarts of the effort check")
    eot_samples: int = Field(20, ge=2, description="EOT passes of the adapted attack on a stochastic model")
    single_step_attack: str = Field("fgsm", description="attack entry of the single-step check")
    black_box: list[str] = Field(default_factory=list, description="black-box attack entries (their eps is set to the audited one)")
    alpha: Number = Field(0.05, gt=0, lt=1, description="significance of the paired comparisons (one-sided)")
    min_points: Number = Field(0.02, ge=0, description="a paired difference must also exceed this fraction of the points")
    unbounded_max: Number = Field(0.05, ge=0, le=1, description="accuracy an unbounded attack may leave")


class VerdictSettings(StrictModel):
    """[verdicts] of bench.toml: thresholds of the per-cell checks (each commented there with its reason)."""

    enabled: bool = True
    probe_points: int = Field(64, ge=1, description="points per cell the model probes run on")
    grad_vanishing: Number = Field(1e-12, ge=0, description="a gradient with L1 norm below this times d is vanishing")
    grad_warn: Number = Field(0.02, ge=0, le=1)
    grad_fail: Number = Field(0.2, ge=0, le=1)
    random_passes: int = Field(3, ge=2, description="forward passes of the same batch in eval mode")
    random_tol: Number = Field(1e-4, ge=0, description="relative logit spread above which a point is stochastic")
    random_warn: Number = Field(0.01, ge=0, le=1)
    prob_tol: Number = Field(1e-4, ge=0, description="|row sum - 1| under which an output row looks like probabilities")
    prob_fail: Number = Field(0.9, ge=0, le=1)
    incomplete_window: Number = Field(0.1, gt=0, lt=1, description="the last fraction of steps watched")
    incomplete_min_steps: int = Field(5, ge=2, description="attacks with fewer steps are single-shot: skipped")
    incomplete_gain: Number = Field(0.05, ge=0, description="late gain of the running-best loss, relative to the total gain")
    incomplete_warn: Number = Field(0.05, ge=0, le=1)
    incomplete_min_points: int = Field(10, ge=1, description="fewer surviving points than this: no verdict")
    silent_warn: Number = Field(0.01, ge=0, le=1)
    shattered_step: Number = Field(0.25, gt=0, le=1, description="the step of the gradient-usefulness test, as a fraction of the attack's eps")
    shattered_warn: Number = Field(0.05, ge=0, le=1)
    shattered_fail: Number = Field(0.15, ge=0, le=1)
    audit: AuditSettings = Field(default_factory=AuditSettings)
