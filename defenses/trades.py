"""TRADES (Zhang et al. 2019): cross-entropy on clean images + beta * KL(f(x) || f(x')), where x' maximises the
KL inside the Linf ball, found with the model in eval mode."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import Field, Number, register_defense

from ._adversarial import AdversarialDefense, AdversarialParams, maximize


class TRADESParams(AdversarialParams):
    beta: Number = Field(6.0, ge=0, description="weight of the robust KL term (papers: beta = 1/lambda = 6)")
    start_noise: Number = Field(0.001, ge=0, description="std of the Gaussian start x + noise * N(0, 1)")


def kl_sum(logits_adv: torch.Tensor, probs_clean: torch.Tensor) -> torch.Tensor:
    """sum over the batch of KL(probs_clean || softmax(logits_adv))."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), probs_clean, reduction="sum")


@register_defense("trades")
class TRADES(AdversarialDefense):
    """TRADES: clean cross-entropy + beta * KL to the prediction on a KL-maximising Linf perturbation."""

    Params = TRADESParams
    inner_train_mode = False  # TRADES searches x' with BatchNorm in eval mode, then trains in train mode

    def batch_loss(self, model, x, y):
        p = self.params
        s = p.inner_settings(self.progress)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            target = F.softmax(model(x).float(), dim=1)
        model.train(was_training)
        # drawn on the CPU from the trainer's seeded, checkpointed RNG, so a resumed run draws the same noise
        delta = (p.start_noise * torch.randn(x.shape)).to(x.device)
        x_adv = maximize(model, x, delta, lambda logits: kl_sum(logits, target), s, train_mode=self.inner_train_mode)
        logits = model(x)
        robust = kl_sum(model(x_adv), F.softmax(logits.float(), dim=1)) / len(x)
        return F.cross_entropy(logits, y) + p.beta * robust, logits
