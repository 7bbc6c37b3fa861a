"""R+FGSM / "fast" adversarial training (Wong et al. 2020): one FGSM step from a uniform random start."""
from __future__ import annotations

from bench import Field, StepSize, register_defense

from .pgd_at import PGDAT, PGDATParams


class RFGSMParams(PGDATParams):
    steps: int = Field(1, ge=1, le=1, description="one step: FGSM from a random start (more steps = pgd_at)")
    step_size: StepSize = Field("10/255", description="alpha, the FGSM step (papers: 10/255 at eps 8/255)")


@register_defense("rfgsm")
class RFGSM(PGDAT):
    """R+FGSM fast adversarial training (uniform start, one FGSM step of alpha), flagged if it collapses."""

    Params = RFGSMParams
