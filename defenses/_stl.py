"""The Sparse Transformation Layer's solver (003, Sun et al.; SPEC §9): a Tikhonov low/high split and convolutional
basis pursuit denoising of the high-pass part,

    min_z ½‖Σ_m d_m ∗ z_m − s_high‖² + λ Σ_m ‖z_m‖₁,   T(x) = s_low + Σ_m d_m ∗ z_m*,

with a multi-channel dictionary (M atoms of S×S×C) and coefficient maps shared across the C channels: the problem
sporco's ConvBPDN solves, and the one the authors' code solves with it. Here it is ADMM in the DFT domain over a
whole batch in torch (the same iteration as sporco's: scaled dual, over-relaxation 1.8, ρ = 50λ + 1, the x-step's
M×M system solved per frequency through the C×C Woodbury identity), with a fixed iteration count instead of
sporco's residual stopping rule and adaptive ρ, so a batch runs in lock step. Circular boundaries, as sporco's FFT
solver has them.

tests/test_stl.py checks the split against sporco.signal.tikhonov_filter and the objective against sporco's
ConvBPDN on the same images; docs/frontends.md has the speed comparison."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ._sparse_frontend import _StraightThrough  # forward: the given value bit for bit; backward: identity


def symmetric_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """numpy's 'symmetric' padding of the last two axes by n (the edge sample repeated: abc|cba)."""
    x = torch.cat([x[..., :n, :].flip(-2), x, x[..., -n:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :n].flip(-1), x, x[..., -n:].flip(-1)], dim=-1)


def tikhonov_split(s: torch.Tensor, lmbda: float, npd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high = s − low): low = argmin ½‖l − s‖² + λ/2 (‖∇_r l‖² + ‖∇_c l‖²) on the image symmetrically padded
    by npd, solved in the DFT domain and cropped (sporco.signal.tikhonov_filter)."""
    h, w = s.shape[-2:]
    sp = symmetric_pad(s.double(), npd)
    ph, pw = sp.shape[-2:]
    fr = torch.fft.fftfreq(ph, dtype=torch.float64)[:, None]
    fc = torch.fft.rfftfreq(pw, dtype=torch.float64)[None, :]
    a = 1.0 + lmbda * ((2 - 2 * torch.cos(2 * math.pi * fr)) + (2 - 2 * torch.cos(2 * math.pi * fc)))
    low = torch.fft.irfft2(torch.fft.rfft2(sp) / a.to(s.device), s=(ph, pw))[..., npd:npd + h, npd:npd + w]
    low = low.to(s.dtype)
    return low, s - low


def load_dictionary(path) -> torch.Tensor:
    """The authors' .npy layout (S, S, C, M) float -> (M, C, S, S) float64, each atom checked finite."""
    d = np.load(path, allow_pickle=False)
    if d.ndim != 4 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{path}: a convolutional dictionary is (S, S, C, M), got shape {d.shape}")
    t = torch.from_numpy(np.ascontiguousarray(d.transpose(3, 2, 0, 1))).double()
    if not torch.isfinite(t).all():
        raise ValueError(f"{path}: the dictionary holds NaN or Inf")
    return t


class ConvBPDN(nn.Module):
    """Batched multi-channel-dictionary CBPDN by ADMM in the DFT domain for H×W images (buffers: the dictionary's
    DFT and the per-frequency C×C Woodbury inverse, precomputed for one ρ)."""

    def __init__(self, atoms: torch.Tensor, height: int, width: int, lmbda: float, iterations: int = 50,
                 rho: float | None = None, relax: float = 1.8):
        super().__init__()
        m, c, _, _ = atoms.shape
        self.lmbda, self.iterations, self.relax = float(lmbda), int(iterations), float(relax)
        self.rho = float(rho) if rho else 50.0 * self.lmbda + 1.0  # sporco's default ρ
        self.size = (height, width)
        df = torch.fft.rfft2(atoms.double(), s=(height, width))  # (M, C, H, Wf): the atom's origin at (0, 0)
        eye = torch.eye(c, dtype=torch.complex128)
        gram = torch.einsum("mchw,mdhw->hwcd", df, df.conj())  # D Dᴴ per frequency (C×C)
        self.register_buffer("df", df.to(torch.complex64))
        self.register_buffer("ginv", torch.linalg.inv(gram + self.rho * eye).permute(2, 3, 0, 1).to(torch.complex64))

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        """Σ_m d_m ∗ z_m (circular): (B, M, H, W) -> (B, C, H, W)."""
        return torch.fft.irfft2(torch.einsum("mchw,bmhw->bchw", self.df, torch.fft.rfft2(z)), s=self.size)

    def objective(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """½‖Dz − s‖² + λ‖z‖₁ per image."""
        r = self.synthesize(z) - s
        return 0.5 * r.flatten(1).pow(2).sum(1) + self.lmbda * z.flatten(1).abs().sum(1)

    @torch.no_grad()
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """The sparse coefficient maps (ADMM's Y, as sporco returns them): (B, C, H, W) -> (B, M, H, W)."""
        b = s.shape[0]
        m = self.df.shape[0]
        dsf = torch.einsum("mchw,bchw->bmhw", self.df.conj(), torch.fft.rfft2(s.float()))
        y = torch.zeros(b, m, *self.size, device=s.device)
        u = torch.zeros_like(y)
        thresh, rho, a = self.lmbda / self.rho, self.rho, self.relax
        dfc = self.df.conj()
        for _ in range(self.iterations):  # in place where a value is not needed again: memory traffic is the cost
            rhs = torch.fft.rfft2(y - u).mul_(rho).add_(dsf)
            t = torch.einsum("cdhw,bdhw->bchw", self.ginv, torch.einsum("mchw,bmhw->bchw", self.df, rhs))
            x = torch.fft.irfft2(rhs.sub_(torch.einsum("mchw,bchw->bmhw", dfc, t)).div_(rho), s=self.size)
            v = x.mul_(a).add_(y, alpha=1 - a).add_(u)  # over-relaxed x, plus the scaled dual
            y = v.abs().sub_(thresh).clamp_min_(0).mul_(v.sign())
            u = v.sub_(y)
        return y


class SparseTransformationLayer(nn.Module):
    """T(x) = clip(low + Σ d_m ∗ z_m*, 0, 1) with z* the CBPDN code of the high-pass part. The forward runs without
    a graph, as the published defense does (an optimisation, not a layer autograd can follow): plain autograd sees
    no gradient through it. backward = 'identity' is the BPDA surrogate (the same values, the identity's gradient)."""

    def __init__(self, solver: ConvBPDN, tikhonov_lmbda: float, npd: int):
        super().__init__()
        self.solver, self.tikhonov_lmbda, self.npd = solver, float(tikhonov_lmbda), int(npd)
        self.backward = "autograd"

    # images solved together: on a CPU batches of 16 ran 1.4x faster per image than batches of 64 (the ADMM state
    # of a larger batch outgrows the caches; results/measured/stl_solver_speed.json)
    chunk = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            low, high = tikhonov_split(x.detach().float(), self.tikhonov_lmbda, self.npd)
            code = torch.cat([self.solver(high[i:i + self.chunk]) for i in range(0, len(high), self.chunk)])
            out = (low + self.solver.synthesize(code)).clamp(0, 1).to(x.dtype)
        if self.backward == "identity":
            return _StraightThrough.apply(x, out)
        return out


class STLNet(nn.Module):
    def __init__(self, stl: SparseTransformationLayer, classifier: nn.Module):
        super().__init__()
        self.stl, self.classifier = stl, classifier

    def forward(self, x):
        return self.classifier(self.stl(x))
