"""Fast Adaptive Boundary attack (FAB; Croce & Hein, ICML 2020), untargeted, Linf / L2 / L1, through pyautoattack.

Why pyautoattack's FAB: it is the authors' code (AutoAttack's FAB), already a pinned dependency behind the
autoattack entries. Its `perturb` keeps only points fooled within `eps` and stops re-attacking a point once any
restart fooled it, so this plug-in calls its single run per restart itself and keeps each point's smallest
adversarial perturbation over the restarts (the minimum-norm use of FAB)."""
from __future__ import annotations

from typing import Literal

import torch

from bench import Field, Number, perturbation_norm, register_attack

from ._gradient_minnorm import GradientMinNorm, GradientMinNormParams

_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@register_attack("fab")
class FAB(GradientMinNorm):
    """Fast Adaptive Boundary (pyautoattack, the authors' code): white-box minimal Linf / L2 / L1 perturbation per point."""

    salt = 13

    class Params(GradientMinNormParams):
        norm: Literal["linf", "l2", "l1"] = "linf"
        restarts: int = Field(1, ge=1, description="runs per point: the first from the clean point, the others from "
                                                   "a random point within half the median best norm "
                                                   "of the batch's fooled points (FAB's eps is one number per batch)")
        alpha_max: Number = Field(0.1, ge=0, le=1)
        eta: Number = Field(1.05, ge=1)
        beta: Number = Field(0.9, ge=0, le=1)

    def minimize(self, model, x, y, gen):
        from pyautoattack.fab_pt import FABAttack_PT  # imported when used: plug-in discovery must not load it

        p = self.params
        fab = FABAttack_PT(model, norm=_NORMS[p.norm], n_restarts=1, n_iter=p.steps, eps=None,
                           alpha_max=p.alpha_max, eta=p.eta, beta=p.beta, device=x.device)
        best = x.clone()
        best_norm = torch.full((len(x),), float("inf"), device=x.device)
        for restart in range(p.restarts):
            found = torch.isfinite(best_norm)
            # FAB draws its random start within eps / 2 of the point; eps is one number per batch
            fab.eps = float(best_norm[found].median()) if found.any() else 1.0
            with torch.no_grad():
                adv = fab.attack_single_run(x, y, use_rand_start=restart > 0)
                hit = model(adv).argmax(1) != y
            size = perturbation_norm(adv - x, p.norm)
            better = hit & (size < best_norm)
            best[better], best_norm[better] = adv[better], size[better]
        return best

