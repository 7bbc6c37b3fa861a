"""What every white-box attack plug-in shares: warnings about gradients the defense declares unreliable, the
defense's named backward surrogate, the verdict for stochastic defenses, and frozen weights while attacking."""
from __future__ import annotations

import contextlib

import torch


def gradient_warnings(ctx, backward: str, eot_samples: int, uses_gradients: bool = True) -> None:
    """Put the reasons to distrust this attack's gradients into the result row's warnings (the masking one only
    for an attack that follows gradients: a score-based one, e.g. Square, never reads them)."""
    defense = ctx.defense
    if defense is None:
        return
    if uses_gradients and defense.non_differentiable and backward in ("", "autograd"):
        ctx.warnings.append(f"defense '{defense.name}' declares non-differentiable parts "
                            f"({', '.join(defense.non_differentiable)}) and the attack used plain autograd: "
                            f"possible gradient masking; try backward = one of {list(defense.surrogates)}")
    if defense.stochastic and eot_samples <= 1:
        ctx.warnings.append(f"defense '{defense.name}' is stochastic and the attack used no EOT (1 pass per step)")


@contextlib.contextmanager
def attacked_model(ctx, model, backward: str):
    """The model with the defense's backward surrogate switched on and its weights frozen: attacks need input
    gradients only, and frozen weights spare every backward pass the weight-gradient work."""
    surrogate = ctx.defense.surrogate(model, backward) if ctx.defense is not None else contextlib.nullcontext(model)
    params = [q for q in model.parameters() if q.requires_grad]
    try:
        for q in params:
            q.requires_grad_(False)
        with surrogate as m:
            yield m
    finally:
        for q in params:
            q.requires_grad_(True)


def ensemble_judge(ctx):
    """For a stochastic defense, the verdict that counts comes from its evaluation model (an ensemble), not
    from the single stochastic pass an attack differentiates; None for deterministic defenses."""
    if ctx.defense is None or not ctx.defense.stochastic or ctx.eval_model is None:
        return None

    def judge(x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ctx.eval_model(x_adv).argmax(1) != y

    return judge
