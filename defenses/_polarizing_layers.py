"""Building blocks of the polarizing front end (dissertation 001 §4.1, SPEC §4): L1-normalised filters, the
ternary activation with selectable backward, bump regularisers and the danger-zone statistics."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

L1_EPS = 1e-12  # keeps an all-zero filter from dividing by zero


class _Ternary(torch.autograd.Function):
    """Forward ½[sign(y − j) + sign(y + j)]; backward identity (steepness 0) or the derivative of the smooth
    stand-in ½[tanh(s(y − j)) + tanh(s(y + j))]. The forward never depends on the backward mode."""

    @staticmethod
    def forward(ctx, y, jump: float, steepness: float):
        ctx.jump, ctx.steepness = jump, steepness
        if steepness > 0:
            ctx.save_for_backward(y)
        return ternary(y, jump)

    @staticmethod
    def backward(ctx, grad):
        if ctx.steepness <= 0:
            return grad, None, None
        (y,) = ctx.saved_tensors
        s, j = ctx.steepness, ctx.jump
        slope = 0.5 * s * (torch.cosh(s * (y - j)).pow(-2) + torch.cosh(s * (y + j)).pow(-2))
        return grad * slope, None, None


def ternary(y: torch.Tensor, jump: float) -> torch.Tensor:
    return 0.5 * (torch.sign(y - jump) + torch.sign(y + jump))


class PolarizingFrontEnd(nn.Module):
    """25 trainable 5x5 filters (stride 1, pad 2, no bias); each output is divided by its filter's L1 norm and
    then quantised to {−1, 0, 1} with thresholds ±j. Pixels enter unnormalised, so an Linf perturbation of eps
    moves each normalised output by at most eps (Hölder)."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int, jump: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_uniform_(self.conv.weight, nonlinearity="relu")
        self.jump = jump
        self.steepness = 0.0  # 0 = identity backward; set by Defense.surrogate for attacks

    def l1_norms(self) -> torch.Tensor:
        return self.conv.weight.abs().sum(dim=(1, 2, 3)) + L1_EPS

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """y_k = (w_k * x) / ||w_k||_1: the quantity the bump regularisers and histograms look at."""
        return self.conv(x) / self.l1_norms().view(1, -1, 1, 1)

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        return _Ternary.apply(y, self.jump, self.steepness)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.normalized(x))


class PolarizingClassifier(nn.Module):
    """The authors' classifier behind the front end: conv5x5 32 → pool → ReLU → conv5x5 64 → pool → ReLU →
    FC 100 → ReLU → FC classes (valid convolutions, so 28x28 inputs give the 1024 features of SPEC §4)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.relu(F.max_pool2d(self.conv1(z), 2))
        z = F.relu(F.max_pool2d(self.conv2(z), 2))
        return self.fc2(F.relu(self.fc1(z.flatten(1))))


class PolarizingNet(nn.Module):
    """Front end + classifier. Evaluation always quantises; training quantises only once `train_quantize` is
    set (stage 3), so a checkpoint reloaded at any point predicts exactly as the trained model did."""

    def __init__(self, front: PolarizingFrontEnd, classifier: nn.Module):
        super().__init__()
        self.front = front
        self.classifier = classifier
        self.train_quantize = True

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised front-end outputs y, what the classifier sees)."""
        y = self.front.normalized(x)
        quantize = self.train_quantize or not self.training
        return y, (self.front.quantize(y) if quantize else y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[1])


def bump_b1(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """B1 = exp(−y²/2σ²): pushes normalised outputs away from 0 (stage 1)."""
    return torch.exp(-y.pow(2) / (2 * sigma ** 2)).mean()


def bump_b2(y: torch.Tensor, sigma: float, jump: float) -> torch.Tensor:
    """B2 = exp(−(y−j)²/2σ²) + exp(−(y+j)²/2σ²): pushes outputs off the quantiser thresholds (stage 2)."""
    return (torch.exp(-(y - jump).pow(2) / (2 * sigma ** 2)) + torch.exp(-(y + jump).pow(2) / (2 * sigma ** 2))).mean()


def danger_fraction(y: torch.Tensor, jump: float, eps: float) -> float:
    """Fraction of normalised outputs within eps of a threshold (|y − j| < eps or |y + j| < eps): only those can
    change their quantised value under an Linf perturbation of size eps."""
    near = ((y - jump).abs() < eps) | ((y + jump).abs() < eps)
    return near.float().mean().item()


HIST_BINS = 100
HIST_RANGE = (-1.0, 1.0)  # |y| <= 1 always: the input is in [0, 1] and y is an L1-normalised projection


@torch.no_grad()
def front_statistics(front: PolarizingFrontEnd, x: torch.Tensor, eps: float, device, batch_size: int = 500) -> dict:
    """Histogram of y and the danger-zone fraction over images x (float in [0, 1])."""
    counts = torch.zeros(HIST_BINS)
    near = total = 0
    for i in range(0, len(x), batch_size):
        y = front.normalized(x[i:i + batch_size].to(device))
        counts += torch.histc(y.float().cpu(), bins=HIST_BINS, min=HIST_RANGE[0], max=HIST_RANGE[1])
        n = y.numel()
        near += danger_fraction(y, front.jump, eps) * n
        total += n
    return {"hist": [int(c) for c in counts], "danger_frac": near / max(1, total)}


def parse_surrogate(spec: str | None) -> float | None:
    """'autograd' / 'identity' / '' → 0 (identity backward); 'smooth:S' → S > 0; anything else → None."""
    if spec in (None, "", "autograd", "identity"):
        return 0.0
    if isinstance(spec, str) and spec.startswith("smooth:"):
        try:
            s = float(spec.split(":", 1)[1])
        except ValueError:
            return None
        return s if s > 0 and math.isfinite(s) else None
    return None
