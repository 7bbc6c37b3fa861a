"""Decision-based minimum-L2 attacks through foolbox 3 (Boundary, HopSkipJump; papers 000 Table 1, A.7).

Each batch of images runs as one foolbox batch from nearest-neighbour starting points (attacks/_starts.py), the
oracle is the model whose decision counts (the ensemble for stochastic defenses), and every oracle call is
counted per image. The runner reports success rate, mean and median L2 over fooled points, queries, and the
accuracy at `eps` when one is given."""
from __future__ import annotations

from typing import ClassVar, Literal

import eagerpy as ep
import foolbox as fb
import torch
from foolbox.devutils import atleast_kd, flatten

from bench import Attack, AttackOutput, AttackParams, BenchError, Field, Number, PassCounter, register_attack

from ._starts import pool_predictions, seeded_rng, starting_points

# an answer sitting exactly on the boundary may flip under a different batch's float rounding: if the oracle
# rejects it, the smallest of these outward pushes along the same ray that it accepts is returned instead
_SETTLE_FACTORS = (1e-5, 1e-4, 1e-3, 1e-2)


class MinL2Params(AttackParams):
    """What every minimum-L2 attack's row needs (the runner reads norm, eps and n_test)."""

    norm: Literal["l2"] = "l2"
    eps: Number | None = Field(None, ge=0, description="also count a point robust unless fooled within this L2 "
                                                       "budget (None: report norms only)")
    n_test: int = Field(0, ge=0, description="test images for this attack (0 = the profile's n_test; --n-test wins)")


class DecisionParams(MinL2Params):
    start_pool: int = Field(0, ge=0, description="test images searched for starting points (0 = the whole test split)")
    start_candidates: int = Field(8, ge=1, description="nearest candidates tried per image if the oracle rejects one")


class _FoolboxMinNorm(Attack):
    kind: ClassVar[str] = "min_norm"
    salt: ClassVar[int] = 0

    def foolbox_attack(self):
        raise NotImplementedError

    def run(self, model, x, y, ctx):
        oracle = ctx.eval_model if ctx.eval_model is not None else model
        p = self.params
        pool_x, pool_pred = pool_predictions(oracle, ctx, p.start_pool)
        starts, valid, queries = starting_points(x, y, oracle, pool_x, pool_pred, p.start_candidates)
        info = ctx.info.setdefault("starts", {"pool": len(pool_x), "without_start": 0})
        info["without_start"] += int((~valid).sum())
        if not valid.all():
            ctx.warnings.append(f"{self.name}: no test image in the pool of {len(pool_x)} is classified differently "
                                f"from some points' labels; those points were not attacked (raise start_pool)")
        x_adv = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        rows = valid.nonzero().squeeze(1)
        if rows.numel():
            counted = PassCounter(oracle).eval()
            fmodel = fb.PyTorchModel(counted, bounds=(0, 1), device=x.device)
            criterion = fb.criteria.Misclassification(y[rows])
            if ctx.defense is not None and getattr(ctx.defense, "stochastic", False):
                ctx.warnings.append(f"{self.name} on stochastic defense '{ctx.defense.name}': the oracle (its "
                                    f"ensemble) answers near the boundary are random, which misleads the search")
            try:
                with seeded_rng(ctx.device, ctx.seed * 1_000_003 + self.salt):
                    adv = self.foolbox_attack().run(fmodel, x[rows], criterion, starting_points=starts[rows])
            except AssertionError as e:  # foolbox re-asks the oracle and asserts the answer is unchanged
                raise BenchError(f"{self.name}: foolbox found the oracle answering the same query differently "
                                 f"({e or 'assertion failed'}); decision-based attacks need a repeatable "
                                 f"decision (a stochastic defense's ensemble is not; on a GPU, run inside "
                                 f"bench.exact.exact_fp32 as the harness does).") from e
            adv, ok = _settle(counted, x[rows], adv.clamp(0, 1), y[rows])
            queries[rows.cpu()] += counted.forward_images / rows.numel()
            x_adv[rows] = torch.where(ok.view(-1, 1, 1, 1), adv, x[rows])
            fooled[rows] = ok
        return AttackOutput(x_adv=x_adv, fooled=fooled, queries=queries)


@torch.no_grad()
def _settle(oracle, x, adv, y):
    ok = oracle(adv).argmax(1) != y
    for factor in _SETTLE_FACTORS:
        rows = (~ok).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        pushed = (x[rows] + (1 + factor) * (adv[rows] - x[rows])).clamp(0, 1)
        hit = oracle(pushed).argmax(1) != y[rows]
        adv[rows[hit]] = pushed[hit]
        ok[rows[hit]] = True
    return adv, ok


@register_attack("boundary")
class Boundary(_FoolboxMinNorm):
    """Boundary attack (foolbox 3): decision-based minimum-L2 perturbation from nearest-neighbour starts."""

    salt = 1

    class Params(DecisionParams):
        steps: int = Field(25000, ge=1, description="foolbox default; the attack also stops once every step size "
                                                     "has converged")
        spherical_step: Number = Field(1e-2, gt=0)
        source_step: Number = Field(1e-2, gt=0)
        source_step_convergence: Number = Field(1e-7, gt=0)
        step_adaptation: Number = Field(1.5, gt=1)
        update_stats_every_k: int = Field(10, ge=1)

    def foolbox_attack(self):
        p = self.params
        return fb.attacks.BoundaryAttack(steps=p.steps, spherical_step=p.spherical_step, source_step=p.source_step,
                                         source_step_convergance=p.source_step_convergence,
                                         step_adaptation=p.step_adaptation,
                                         update_stats_every_k=p.update_stats_every_k)


class PerSampleHopSkipJump(fb.attacks.HopSkipJumpAttack):
    """foolbox 3.3.4 divides the estimated gradients by ONE norm taken over the whole batch, so each image's
    update shrinks like 1/sqrt(batch size) and batched HSJ makes far smaller steps than the algorithm
    prescribes (a weaker attack). Renormalising per image restores unit-norm directions; the common factor
    cancels, so this is exactly the per-image normalisation of the paper."""

    def approximate_gradients(self, is_adversarial, x_advs, steps, delta):
        grad = super().approximate_gradients(is_adversarial, x_advs, steps, delta)
        norms = ep.norms.l2(flatten(grad), axis=-1)
        return grad / (atleast_kd(norms, grad.ndim) + 1e-12)


@register_attack("hopskipjump")
class HopSkipJump(_FoolboxMinNorm):
    """HopSkipJump (foolbox 3, per-image gradient normalisation): decision-based minimum L2 from nearest-neighbour starts."""

    salt = 2

    class Params(DecisionParams):
        steps: int = Field(64, ge=1, description="foolbox default: gradient-estimation + step + binary-search rounds")
        initial_gradient_eval_steps: int = Field(100, ge=1)
        max_gradient_eval_steps: int = Field(10000, ge=1)
        stepsize_search: Literal["geometric_progression", "grid_search"] = "geometric_progression"
        gamma: Number = Field(1.0, gt=0, description="binary-search threshold factor (theta = gamma / d^1.5)")

    def foolbox_attack(self):
        p = self.params
        return PerSampleHopSkipJump(steps=p.steps, initial_gradient_eval_steps=p.initial_gradient_eval_steps,
                                    max_gradient_eval_steps=p.max_gradient_eval_steps,
                                    stepsize_search=p.stepsize_search, gamma=p.gamma, constraint="l2")
