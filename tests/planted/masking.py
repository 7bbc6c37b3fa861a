"""Defenses that hide their weakness and declare nothing: bench must find it by measuring (bench/verdicts/).

Each wraps the dataset's standard classifier, trained as usual; the trick acts only at evaluation time where
training through it would not work (saturated logits, probabilities), so the network under it is an ordinary
natural model whose true robustness at Linf 8/255 is ~0 %."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from bench import BenchError, Defense, DefenseParams, Field, Number, register_defense


class _Wrapped(nn.Module):
    def __init__(self, net: nn.Module, fn, eval_only: bool):
        super().__init__()
        self.net, self.fn, self.eval_only = net, fn, eval_only

    def forward(self, x):
        if self.eval_only and self.training:
            return self.net(x)
        return self.fn(self.net, x)


class PlantedParams(DefenseParams):
    weights: str = Field("", description="state_dict of the wrapped network (a natural model), loaded before training")


class _Planted(Defense):
    eval_only = False
    Params = PlantedParams

    def transform(self, net, x):
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        net = super().build_model()
        if self.params.weights:
            net.load_state_dict(torch.load(self.params.weights, map_location="cpu", weights_only=True))
        return _Wrapped(net, self.transform, self.eval_only)


@register_defense("planted_round")
class PlantedRound(_Planted):
    """Input rounded to 16 levels before the network: the input gradient is exactly zero (torch.round)."""

    class Params(PlantedParams):
        levels: int = Field(16, ge=2)

    def transform(self, net, x):
        q = self.params.levels - 1
        return net(torch.round(x * q) / q)


@register_defense("planted_saturated")
class PlantedSaturated(_Planted):
    """Logits multiplied by 1e4 at test time: the softmax saturates and the CE gradient is exactly zero."""

    eval_only = True

    class Params(PlantedParams):
        scale: Number = Field(1e4, gt=0)

    def transform(self, net, x):
        return net(x) * self.params.scale


@register_defense("planted_noise")
class PlantedNoise(_Planted):
    """Gaussian noise on the input at test time, declared nowhere (no EOT, no ensemble)."""

    class Params(PlantedParams):
        sigma: Number = Field(0.05, ge=0)

    def transform(self, net, x):
        return net((x + self.params.sigma * torch.randn_like(x)).clamp(0, 1))


@register_defense("planted_probs")
class PlantedProbs(_Planted):
    """Returns softmax probabilities instead of logits at test time."""

    eval_only = True

    def transform(self, net, x):
        return net(x).softmax(1)


class _FlipSigns(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a fixed ±1 pattern."""

    @staticmethod
    def forward(ctx, x, signs):
        ctx.save_for_backward(signs)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (signs,) = ctx.saved_tensors
        return g * signs, None


@register_defense("planted_misleading_backward")
class PlantedMisleadingBackward(_Planted):
    """Its default backward flips the sign of half the input gradient's pixels (a fixed random pattern): finite,
    non-zero, input-dependent gradients that every per-cell check finds healthy, but that point nowhere. It
    declares one backward surrogate, 'exact' (the true gradient), as a defense with a straight-through default
    and a better smooth surrogate does (polarizing)."""

    eval_only = True
    surrogates = ("exact",)
    exact = False

    def transform(self, net, x):
        if self.exact:
            return net(x)
        signs = torch.randint(0, 2, x.shape[1:], generator=torch.Generator().manual_seed(0)).to(x) * 2 - 1
        return net(_FlipSigns.apply(x, signs))

    @contextlib.contextmanager
    def surrogate(self, model, spec):
        if spec in (None, "", "autograd"):
            yield model
            return
        if spec != "exact":
            raise BenchError(f"planted_misleading_backward has no surrogate {spec!r}. Allowed: 'exact'.")
        self.exact = True
        try:
            yield model
        finally:
            self.exact = False


# ---------------------------------------------------------------- shattered gradients: finite, non-zero, useless

@register_defense("planted_wiggle")
class PlantedWiggle(_Planted):
    """Input quantised to 16 levels (no gradient), plus a tiny high-frequency term a·sin(ω·x): the decisions are
    those of the quantised input (a = 1e-3 moves no pixel across a level), but the input gradient is all the
    wiggle's, a·ω·cos(ω·x) = ±10 per pixel, a pattern that changes completely within 1e-3 of x (Athalye et al.
    2018's shattered gradients: finite, non-zero, and pointing nowhere)."""

    class Params(PlantedParams):
        levels: int = Field(16, ge=2)
        amplitude: Number = Field(1e-3, gt=0)
        frequency: Number = Field(1e4, gt=0)

    def transform(self, net, x):
        q = self.params.levels - 1
        return net(torch.round(x * q) / q + self.params.amplitude * torch.sin(self.params.frequency * x))


class _ScrambledRound(torch.autograd.Function):
    """Forward: rounding to `levels` (non-differentiable). Backward: the straight-through gradient times a ±1
    pattern hashed from the input's own values, so it changes with every pixel value (a surrogate gradient that
    looks random from point to point, unlike planted_misleading_backward's one fixed pattern)."""

    @staticmethod
    def forward(ctx, x, q):
        ctx.save_for_backward(x)
        return torch.round(x * q) / q

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        signs = torch.sign(torch.sin(x * 7919.0 + 0.5) + 1e-12)
        return g * signs, None


@register_defense("planted_scrambled_backward")
class PlantedScrambledBackward(_Planted):
    """Rounded input whose custom backward returns a random-looking surrogate gradient (see _ScrambledRound)."""

    class Params(PlantedParams):
        levels: int = Field(16, ge=2)

    def transform(self, net, x):
        return net(_ScrambledRound.apply(x, float(self.params.levels - 1)))


@register_defense("planted_lastbit_noise")
class PlantedLastBitNoise(_Planted):
    """Benign randomness: noise in the last bits of the logits (1e-7 of their scale, what a non-deterministic
    GPU kernel leaves), which no check may mistake for a stochastic defense or for shattered gradients."""

    eval_only = True

    def transform(self, net, x):
        z = net(x)
        return z + 1e-7 * z.detach().abs().amax(1, keepdim=True) * torch.randn_like(z)
