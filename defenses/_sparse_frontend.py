"""Building blocks of the sparse-coding front end (000 §3, 001 §4.2, SPEC §1-2): the frozen dictionary encoder
(conv -> top-T -> optional dropout -> quantizing activation), the transposed-conv decoder, the whole network,
the softmax ensemble, and the backward surrogates attacks select by name (BPDA, SPEC §2).

Every surrogate changes gradients only: the forward of each mode runs the same operations on the same values,
so outputs are bit-identical (given the same random state for the dropout draw)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import BenchError, set_on_modules

# ---------------------------------------------------------------- backward modes

SURROGATE_GRAMMAR = ("'autograd' (plain gradients: the quantizer's is zero), 'smooth:S' (derivative of "
                     "½[tanh(S(x̃−j)) + tanh(S(x̃+j))], S >= 0, 'smooth' = 'smooth:4', 'smooth:0' = identity), "
                     "'identity' (activation passes the gradient unchanged), 'top_u:U' or 'top_u:kT' (gradient "
                     "through the top-U pre-selection coefficients; 'top_u' = 'top_u:2T'), 'frontend_identity' "
                     "(the whole front end, encoder + decoder, is the identity in the backward pass); activation "
                     "and top-U parts combine with '+', e.g. 'smooth:4+top_u:2T'")


@dataclass(frozen=True)
class Backward:
    activation: str = "autograd"  # autograd | smooth | identity
    steepness: float = 0.0
    top_u: int | None = None
    frontend_identity: bool = False


def _bad(spec: str, why: str) -> BenchError:
    return BenchError(f"Unknown backward surrogate {spec!r} for the sparse front end: {why}. Allowed: "
                      f"{SURROGATE_GRAMMAR}.")


def parse_backward(spec: str | None, top_t: int, n_atoms: int, quantize: bool = True) -> Backward:
    """'smooth:4+top_u:2T' -> Backward(activation='smooth', steepness=4, top_u=30) for T = 15."""
    if spec in (None, "", "autograd"):
        return Backward()
    fields: dict = {}
    for part in spec.replace(" ", "").split("+"):
        name, _, arg = part.partition(":")
        if name in fields or (name in ("smooth", "identity") and "activation" in fields):
            raise _bad(spec, f"'{part}' repeats or contradicts an earlier part")
        if name == "smooth":
            try:
                s = float(arg) if arg else 4.0
            except ValueError:
                raise _bad(spec, f"steepness {arg!r} is not a number") from None
            if s < 0:
                raise _bad(spec, "steepness must be >= 0")
            fields["activation"] = ("smooth", s) if s > 0 else ("identity", 0.0)
        elif name == "identity" and not arg:
            fields["activation"] = ("identity", 0.0)
        elif name == "top_u":
            fields["top_u"] = _parse_u(spec, arg or "2T", top_t, n_atoms)
        elif name == "frontend_identity" and not arg:
            fields["frontend_identity"] = True
        else:
            raise _bad(spec, f"'{part}' is not a known part")
    if fields.get("frontend_identity") and len(fields) > 1:
        raise _bad(spec, "'frontend_identity' replaces the whole front end and combines with nothing")
    if "activation" in fields and not quantize:
        raise _bad(spec, "this front end has no quantizing activation (quantize off), so only 'top_u' and "
                         "'frontend_identity' apply")
    activation, steepness = fields.get("activation", ("autograd", 0.0))
    return Backward(activation, steepness, fields.get("top_u"), fields.get("frontend_identity", False))


def _parse_u(spec: str, arg: str, top_t: int, n_atoms: int) -> int:
    m = re.fullmatch(r"(\d*\.?\d*)T", arg)
    try:
        u = round(float(m.group(1) or 1) * top_t) if m else int(arg)
    except ValueError:
        raise _bad(spec, f"U = {arg!r} is neither an integer nor a multiple of T like '2T'") from None
    if not 1 <= u <= n_atoms:
        raise _bad(spec, f"U = {u} must lie in [1, {n_atoms}] (the number of atoms)")
    return u


# ---------------------------------------------------------------- the encoder's non-differentiable parts

def quantize(c: torch.Tensor, l1: torch.Tensor, jump: float) -> torch.Tensor:
    """sign(c)·||d_l||_1 where |c| > jump·||d_l||_1 (jump = beta·eps), else 0 (000 eq. 3). `l1` holds each
    coefficient's atom norm (broadcastable to c)."""
    return torch.where(c.abs() > jump * l1, torch.sign(c) * l1, 0.0)


def smooth_slope(c: torch.Tensor, l1: torch.Tensor, jump: float, s: float) -> torch.Tensor:
    """d/dx̃ of ½[tanh(s(x̃−j)) + tanh(s(x̃+j))] at x̃ = c/||d_l||_1 (= d/dc of ||d_l||_1 times that function)."""
    x = c / l1
    return 0.5 * s * (torch.cosh(s * (x - jump)).pow(-2) + torch.cosh(s * (x + jump)).pow(-2))


def select(c: torch.Tensor, top: torch.Tensor, survive: torch.Tensor | None) -> torch.Tensor:
    """The top-T coefficients (B × T × H × W, gathered at `top`), dropped ones set to 0."""
    v = c.gather(1, top)
    return v if survive is None else torch.where(survive, v, 0.0)


def activation_slope(v: torch.Tensor, l1: torch.Tensor, jump: float, mode: Backward) -> torch.Tensor | float:
    """The surrogate derivative of the quantizer at v (1 when nothing is quantized)."""
    if jump is None or mode.activation == "identity":
        return 1.0
    if mode.activation == "smooth":
        return smooth_slope(v, l1, jump, mode.steepness)
    return 0.0  # plain autograd: sign() has zero derivative


class _Quantize(torch.autograd.Function):
    """Forward: `quantize`. Backward: identity or smooth surrogate slope (`mode`)."""

    @staticmethod
    def forward(ctx, v, l1, jump: float, mode: Backward):
        ctx.jump, ctx.mode = jump, mode
        ctx.save_for_backward(v, l1)
        return quantize(v, l1, jump)

    @staticmethod
    def backward(ctx, grad):
        v, l1 = ctx.saved_tensors
        return grad * activation_slope(v, l1, ctx.jump, ctx.mode), None, None, None


class _TopUEncode(torch.autograd.Function):
    """Forward: the encoder's codes from coefficients c (exactly `codes`, as in every other mode). Backward (top-U
    surrogate): the gradient of each code reaches its coefficient through the activation surrogate, but only for
    the top-U coefficients by pre-selection |c|; the top-T selection and the dropout draw are ignored."""

    @staticmethod
    def forward(ctx, c, top, survive, l1_atoms, jump, mode: Backward, upper):
        ctx.jump, ctx.mode, ctx.has_survive = jump, mode, survive is not None
        ctx.save_for_backward(c, top, survive if survive is not None else top, l1_atoms, upper)
        return codes(c, top, survive, l1_atoms, jump, lambda v, l1: quantize(v, l1, jump))

    @staticmethod
    def backward(ctx, grad):
        c, top, survive, l1_atoms, upper = ctx.saved_tensors
        l1 = l1_atoms.view(1, -1, 1, 1)
        v = select(c, top, survive if ctx.has_survive else None)
        # codes outside the top T (or dropped) have activation input 0; inside, their selected value
        slope = torch.zeros_like(c).add_(activation_slope(torch.zeros_like(l1), l1, ctx.jump, ctx.mode))
        slope.scatter_(1, top, torch.as_tensor(activation_slope(v, l1_atoms[top], ctx.jump, ctx.mode),
                                               dtype=c.dtype, device=c.device).expand_as(v))
        return torch.where(upper, grad * slope, 0.0), None, None, None, None, None, None


def codes(c, top, survive, l1_atoms, jump, activate) -> torch.Tensor:
    """Dense codes: zeros except the kept top-T coefficients, passed through `activate` (if quantizing)."""
    v = select(c, top, survive)
    if jump is not None:
        v = activate(v, l1_atoms[top])
    return torch.zeros_like(c).scatter(1, top, v)


class _StraightThrough(torch.autograd.Function):
    """Forward: `value` (computed elsewhere without a graph). Backward: the gradient goes to `source` unchanged."""

    @staticmethod
    def forward(ctx, source, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# ---------------------------------------------------------------- modules

class SparseEncoder(nn.Module):
    """Frozen conv whose filters are the unit-norm dictionary atoms -> top-T per location by |value| (sign kept)
    -> optional dropout of survivors with probability p at train AND test time (no rescale) -> quantizing
    activation (optional). Runs in fp32 even under autocast: the thresholds decide which codes survive."""

    def __init__(self, filters: torch.Tensor, stride: int, top_t: int, beta: float, eps: float,
                 dropout_p: float = 0.0, quantize: bool = True):
        super().__init__()
        self.register_buffer("filters", filters.float().clone())
        self.stride, self.top_t, self.dropout_p, self.quantize = stride, top_t, dropout_p, quantize
        self.jump = beta * eps

    @property
    def n_atoms(self) -> int:
        return self.filters.shape[0]

    def l1_norms(self) -> torch.Tensor:
        return self.filters.abs().sum(dim=(1, 2, 3))

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.float(), self.filters, stride=self.stride)

    def forward(self, x: torch.Tensor, mode: Backward = Backward()) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.encode(self.coefficients(x), mode)

    def encode(self, c: torch.Tensor, mode: Backward = Backward()) -> torch.Tensor:
        """Coefficients (B × L × H × W) -> top-T (-> dropout) (-> quantized) codes. Only the T kept values per
        location are quantized, so the activation costs T/L of a dense pass."""
        with torch.autocast(c.device.type, enabled=False):
            magnitude = c.abs()
            top = magnitude.topk(self.top_t, dim=1, sorted=False).indices
            survive = torch.rand(top.shape, device=c.device) >= self.dropout_p if self.dropout_p > 0 else None
            jump = self.jump if self.quantize else None
            l1 = self.l1_norms()
            if mode.top_u is not None:
                upper = torch.zeros_like(c, dtype=torch.bool).scatter_(
                    1, magnitude.topk(mode.top_u, dim=1, sorted=False).indices, True)
                return _TopUEncode.apply(c, top, survive, l1, jump, mode, upper)
            if mode.activation == "autograd":
                return codes(c, top, survive, l1, jump, lambda v, l1_top: quantize(v, l1_top, jump))
            return codes(c, top, survive, l1, jump, lambda v, l1_top: _Quantize.apply(v, l1_top, jump, mode))


class Decoder(nn.Module):
    """ConvT(L→w1, k, s) → ReLU → ConvT(w1→w2, 3) → ReLU → ConvT(w2→C, 3) → ReLU, centre-cropped to the image
    size and clamped to [0, 1] (SPEC §1: w = (300, 100); CIFAR: 15→32→34→36→32)."""

    def __init__(self, n_atoms: int, channels: int, kernel: int, stride: int, widths=(300, 100)):
        super().__init__()
        self.up = nn.ConvTranspose2d(n_atoms, widths[0], kernel, stride)
        self.mid = nn.ConvTranspose2d(widths[0], widths[1], 3)
        self.out = nn.ConvTranspose2d(widths[1], channels, 3)

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = F.relu(self.out(F.relu(self.mid(F.relu(self.up(z))))))
        top, left = (h.shape[-2] - size[0]) // 2, (h.shape[-1] - size[1]) // 2
        return h[..., top:top + size[0], left:left + size[1]].clamp(0, 1)


class SparseCodingNet(nn.Module):
    """encoder -> decoder (the front end, image in, image out) -> classifier. `backward_mode` selects the
    gradient surrogate attacks see; it never changes the forward values."""

    def __init__(self, encoder: SparseEncoder, decoder: Decoder, classifier: nn.Module):
        super().__init__()
        self.encoder, self.decoder, self.classifier = encoder, decoder, classifier
        self.backward_mode = Backward()

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, self.backward_mode), x.shape[-2:])

    def stages(self, x: torch.Tensor) -> list:
        """(name, function) pairs whose composition is this model's forward on inputs shaped like `x` (with the
        current backward mode), for `bench perf-stages`' cost breakdown."""
        mode, size = self.backward_mode, x.shape[-2:]
        return [("dictionary conv", self.encoder.coefficients),
                ("top-T + quantizer", lambda c: self.encoder.encode(c, mode)),
                ("decoder", lambda z: self.decoder(z, size)),
                ("classifier", self.classifier)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward_mode.frontend_identity:
            with torch.no_grad():
                z = self.frontend(x)
            z = _StraightThrough.apply(x, z)
        else:
            z = self.frontend(x)
        return self.classifier(z)


class SoftmaxEnsemble(nn.Module):
    """log of the mean softmax over `passes` stochastic forwards (argmax = the ensemble's vote; softmax of the
    output gives the mean probabilities back)."""

    def __init__(self, model: nn.Module, passes: int):
        super().__init__()
        self.model, self.passes = model, passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(F.softmax(self.model(x).float(), dim=1) for _ in range(self.passes)) / self.passes
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def backward_mode(model: nn.Module, mode: Backward):
    """Set `mode` on every SparseCodingNet inside `model` (e.g. behind a PassCounter), restore it afterwards."""
    return set_on_modules(model, SparseCodingNet, "backward_mode", mode, "sparse-coding front end (SparseCodingNet)")
