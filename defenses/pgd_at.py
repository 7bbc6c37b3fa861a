"""Madry et al. PGD adversarial training: train on the last iterate of a Linf PGD attack on the current model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import Field, random_start, register_defense

from ._adversarial import AdversarialDefense, AdversarialParams, maximize


class PGDATParams(AdversarialParams):
    random_start: bool = Field(True, description="start the inner PGD from U(-eps, eps) (Madry's paper) instead of "
                                                 "from the clean image (what the authors' code silently did)")


@register_defense("pgd_at")
class PGDAT(AdversarialDefense):
    """Madry PGD adversarial training (Linf PGD inner maximisation on cross-entropy, last iterate)."""

    Params = PGDATParams

    def batch_loss(self, model, x, y):
        s = self.params.inner_settings(self.progress)
        # the global RNG is seeded and checkpointed by the trainer, so a resumed run draws the same starts
        delta = random_start(x, "linf", s.eps, None) if self.params.random_start else torch.zeros_like(x)
        x_adv = maximize(model, x, delta, lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"), s,
                         train_mode=self.inner_train_mode)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
