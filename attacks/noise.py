"""Random-noise corruption (not adversarial): accuracy under additive Gaussian noise, as in the HaH chapter
(001 ch. 5, Table 5.1: σ = 0.1)."""
from __future__ import annotations

import torch

from bench import Attack, AttackOutput, AttackParams, Field, Number, register_attack


@register_attack("gaussian_noise")
class GaussianNoise(Attack):
    """Accuracy under i.i.d. Gaussian pixel noise of std sigma (clipped to [0, 1], seeded); not an attack."""

    kind = "bounded"  # no norm: the harness skips the budget check and reports accuracy on the noisy images

    class Params(AttackParams):
        sigma: Number = Field(0.1, gt=0, description="noise standard deviation (pixels in [0, 1])")

    def run(self, model, x, y, ctx):
        # torch's global CPU generator: the harness seeds it per batch from (seed, batch position), so the noise
        # is reproducible, fresh for every batch and the same however a cell is split into shards
        noise = torch.randn(x.shape).to(x.device)
        x_noisy = (x + self.params.sigma * noise).clamp(0, 1)
        judge = ctx.eval_model if ctx.eval_model is not None else model
        with torch.no_grad():
            fooled = judge(x_noisy).argmax(1) != y
        return AttackOutput(x_adv=x_noisy, fooled=fooled)
