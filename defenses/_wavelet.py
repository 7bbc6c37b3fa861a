"""Building blocks of the sparsifying front end (002 §8.1 of the spec): an orthonormal 2-D wavelet basis built by
PyWavelets, the top-K projection f(x) = Ψ·H_K(Ψᵀx) per image and channel, its three gradient modes, and the
4-layer MNIST CNN the paper retrains on sparsified images.

The basis is a dense N×N analysis matrix A (coefficients c = A·x of one H×W channel): each column is PyWavelets'
level-L periodized 2-D DWT of a unit image, so the transform is exactly PyWavelets' and, for an orthogonal wavelet,
A is orthogonal (checked when built: a wavelet or size that is not is refused). A dense matrix rather than a filter
bank because the front end needs every coefficient anyway (top-K over the whole image) and a matmul is the fastest
batched transform on a CPU for N <= 1024."""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import BenchError, Normalize

from ._sparse_frontend import _StraightThrough  # forward: the given value bit for bit; backward: identity

# ---------------------------------------------------------------- the basis


def orthogonal_wavelets() -> list[str]:
    """PyWavelets' discrete wavelets with an orthogonal filter bank (what an orthonormal basis needs)."""
    import pywt

    return [w for w in pywt.wavelist(kind="discrete") if pywt.Wavelet(w).orthogonal]


@functools.lru_cache(maxsize=8)
def analysis_matrix(wavelet: str, height: int, width: int, level: int) -> torch.Tensor:
    """A (N×N, float64, N = height·width): A @ x.flatten() = the level-`level` periodized DWT coefficients of x,
    in PyWavelets' coeffs_to_array order. Raises BenchError when A is not orthogonal (to 1e-9)."""
    import pywt

    n = height * width
    eye = np.eye(n).reshape(n, height, width)
    with warnings.catch_warnings():  # "level too high" for long filters (sym9 on 32×32): periodization is exact
        warnings.simplefilter("ignore", UserWarning)
        coeffs = pywt.wavedec2(eye, wavelet, mode="periodization", level=level, axes=(-2, -1))
    arr, _ = pywt.coeffs_to_array(coeffs, axes=(-2, -1))
    if arr.shape[-2:] != (height, width):
        raise BenchError(f"The {wavelet} level-{level} wavelet transform of a {height}×{width} image has "
                         f"{arr.shape[-2]}×{arr.shape[-1]} coefficients, not {height}×{width}: the image sides must "
                         f"be divisible by 2^level = {2 ** level}. Choose a smaller level.")
    a = torch.from_numpy(arr.reshape(n, n).T.copy())  # column j = coefficients of unit image j
    err = (a @ a.T - torch.eye(n, dtype=a.dtype)).abs().max().item()
    if err > 1e-9:
        raise BenchError(f"The {wavelet} level-{level} wavelet basis on {height}×{width} images is not orthonormal "
                         f"(max |AAᵀ − I| = {err:.2g}); the front end needs an orthogonal wavelet "
                         f"(e.g. db5, coif1, sym9).")
    return a


def sparsity_levels(rho: list[float], channels: int, n: int) -> list[int]:
    """K per channel = floor(ρ·N), at least 1 (the paper: ρ = 3.5 % of 784 -> K = 27)."""
    rhos = rho if len(rho) == channels else rho * channels
    return [max(1, int(np.floor(r * n + 1e-9))) for r in rhos]


# RGB -> YCbCr (ITU-R BT.601 / JPEG luma and chroma weights, without the +0.5 chroma offset: the front end
# sparsifies zero-centred chroma; the paper names no formula). Inverted exactly by its matrix inverse.
_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]], dtype=torch.float64)


def topk_mask(coef: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """1 on the K_c largest |coefficients| of each (image, channel) row of coef (B×C×N), 0 elsewhere: exactly K_c
    ones per row (torch.topk breaks ties by index)."""
    mask = torch.zeros_like(coef)
    mag = coef.detach().abs()
    for c, k in enumerate(ks):
        mask[:, c].scatter_(1, mag[:, c].topk(k, dim=1).indices, 1.0)
    return mask


# ---------------------------------------------------------------- gradient modes

SURROGATE_GRAMMAR = ("'projection' (= 'autograd': the front end is linear on a fixed support, so autograd gives the "
                     "gradient projected onto the input's top-K support, the paper's 'projections'), 'identity' "
                     "(BPDA of 1: the whole front end passes the gradient unchanged), 'iterated:M' (the paper's "
                     "'iterated projections': the support re-estimated M times at the candidate x + eps·sgn(P_K(g)), "
                     "eps = the defense's iterate_eps; 'iterated' = 'iterated:20')")


@dataclass(frozen=True)
class Backward:
    mode: str = "projection"  # projection | identity | iterated
    iterations: int = 0


def parse_backward(spec: str | None) -> Backward:
    if spec in (None, "", "autograd", "projection"):
        return Backward()
    if spec == "identity":
        return Backward("identity")
    m = re.fullmatch(r"iterated(?::(\d+))?", spec.replace(" ", ""))
    if m and (m.group(1) is None or int(m.group(1)) >= 1):
        return Backward("iterated", int(m.group(1) or 20))
    raise BenchError(f"Unknown backward surrogate {spec!r} for the wavelet front end. Allowed: {SURROGATE_GRAMMAR}.")


class _IteratedProjection(torch.autograd.Function):
    """Forward: the top-K projection at the input's own support. Backward: the upstream gradient projected onto
    the support re-estimated at x + eps·sgn(projected gradient), M times (002's 'iterated projections')."""

    @staticmethod
    def forward(ctx, flat, a, ks, iterations, eps):
        coef = flat @ a.T
        ctx.save_for_backward(flat, a)
        ctx.ks, ctx.iterations, ctx.eps = ks, iterations, eps
        return (coef * topk_mask(coef, ks)) @ a

    @staticmethod
    def backward(ctx, g):
        flat, a = ctx.saved_tensors
        gc = g @ a.T
        p = (gc * topk_mask(flat @ a.T, ctx.ks)) @ a
        for _ in range(ctx.iterations):
            cand = flat + ctx.eps * p.sign()
            p = (gc * topk_mask(cand @ a.T, ctx.ks)) @ a
        return p, None, None, None, None


# ---------------------------------------------------------------- the front end


class WaveletSparsifier(nn.Module):
    """f(x) = clip(Ψ·H_K(Ψᵀx), 0, 1) per channel (in YCbCr for colour images when `ycbcr`), no parameters."""

    def __init__(self, analysis: torch.Tensor, ks: list[int], ycbcr: bool, iterate_eps: float):
        super().__init__()
        self.register_buffer("a", analysis.float())
        self.register_buffer("to_ycbcr", _YCBCR.float())
        self.register_buffer("from_ycbcr", torch.linalg.inv(_YCBCR).float())
        self.ks, self.ycbcr, self.iterate_eps = list(ks), ycbcr, float(iterate_eps)
        self.backward = Backward()

    def _colour(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", m, x)

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """The top-K projection of B×C×N rows, differentiated as the backward mode says (identity aside)."""
        if self.backward.mode == "iterated":
            return _IteratedProjection.apply(flat, self.a, self.ks, self.backward.iterations, self.iterate_eps)
        coef = flat @ self.a.T
        return (coef * topk_mask(coef, self.ks)) @ self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = self._colour(x, self.to_ycbcr) if self.ycbcr else x
        out = self.project(v.reshape(b, c, h * w)).view(b, c, h, w)
        if self.ycbcr:
            out = self._colour(out, self.from_ycbcr)
        out = out.clamp(0, 1)
        if self.backward.mode == "identity":  # BPDA of 1: the same values, the gradient of the identity
            return _StraightThrough.apply(x, out.detach())
        return out


class WaveletNet(nn.Module):
    def __init__(self, front: WaveletSparsifier, classifier: nn.Module):
        super().__init__()
        self.front, self.classifier = front, classifier

    def forward(self, x):
        return self.classifier(self.front(x))


class NielsenCNN(nn.Module):
    """002's multiclass MNIST CNN (Nielsen ch. 6; the authors' code): conv 5×5 20 maps (same) + ReLU + maxpool 2,
    conv 5×5 40 maps (valid) + ReLU + maxpool 2, FC 1000 + ReLU + dropout, FC 1000 + ReLU + dropout, FC classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=2)
        self.conv2 = nn.Conv2d(20, 40, 5)
        side = (image_size // 2 - 4) // 2
        self.fc1 = nn.Linear(40 * side * side, 1000)
        self.fc2 = nn.Linear(1000, 1000)
        self.fc3 = nn.Linear(1000, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


def nielsen_classifier(info, dropout: float) -> nn.Module:
    return nn.Sequential(Normalize(info.mean, info.std),
                         NielsenCNN(info.num_classes, info.shape[0], info.shape[1], dropout))
