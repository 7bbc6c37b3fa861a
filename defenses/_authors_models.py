"""The papers' authors' architectures, in their layout and key names, so that their published checkpoints load
strictly (every key, no extra one) into a model bench can attack: factories for the `pretrained` plug-in
(`model = "defenses/_authors_models.py:FACTORY"` in bench.toml, or `bench run --model ...`).

- `resnet32_cifar10`: the ResNet-32 of Madry et al. as the sparse-coding front end's repository builds it (000,
  SPEC §3), behind its PGD-AT and TRADES checkpoints (000 Table 1, 001 Table 4.3).
- `polarizing`: the polarizing front end and its CNN (001 §4.1, SPEC §4), behind
  001 Table 4.1.

Every model takes images in [0, 1] and returns logits. The weights, their sha256 and where to fetch them are in the
external zoo cards of results/zoo/external/."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import MadryUnit

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
L1_EPS = 1e-12  # the authors' guard against an all-zero filter


class _Normalize(nn.Module):
    """The CIFAR-10 standardisation the checkpoints were trained behind. Parameterless and with non-persistent
    buffers: the authors' state dicts hold no normalization entries, so none may appear in this model's."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class ResNet32Authors(nn.Module):
    """Stem conv 3->16; block1..3 of five pre-activation units (keys bn1, conv1, bn2, conv2; widths 16/32/64,
    strides 1/2/2; LeakyReLU 0.1; shortcut: average pool by the stride, zero channels padded on both sides); head
    LeakyReLU(BN) -> global average pool -> linear. Keys: conv1, block{1,2,3}.{0..4}.*, bn1, linear (188)."""

    def __init__(self, num_classes: int = 10, units: int = 5):
        super().__init__()
        self.normalize = _Normalize(CIFAR10_MEAN, CIFAR10_STD)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        cin = 16
        for b, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            units_ = []
            for u in range(units):
                # the quirk the checkpoints were trained with: the unit that activates before the residual
                # (block1's first) feeds its conv1 the raw input and its shortcut LeakyReLU(BN1(x)); built the
                # other way, the PGD-AT checkpoint drops from 81.1 to 72.9 % clean on the first 1000 test images
                units_.append(MadryUnit(cin, width, stride if u == 0 else 1,
                                        activate_before_residual=(b == 1 and u == 0), conv_on_input=True))
                cin = width
            setattr(self, f"block{b}", nn.Sequential(*units_))
        self.bn1 = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.leaky_relu(self.bn1(out), 0.1)
        return self.linear(out.mean(dim=(2, 3)))


class Ternary(nn.Module):
    """½[sign(y − j) + sign(y + j)]: zero gradient almost everywhere. Its own module so that an entry can declare
    it (`bpda = {"frontend.activation" = "identity"}`): the authors attacked through its identity backward."""

    def forward(self, y, jump):
        return 0.5 * (torch.sign(y - jump) + torch.sign(y + jump))


class PolarizingFrontEndAuthors(nn.Module):
    """Keys weight (25×1×5×5, no bias), jump and bpda_steepness (scalars, stored in the checkpoint: MNIST's jump
    is 0.5, Fashion-MNIST's 0.2). Each filter's output (padding 2) is divided by the filter's L1 norm, then
    quantised. bpda_steepness is only loaded: the forward pass never reads it."""

    def __init__(self, filters: int = 25, kernel_size: int = 5):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(filters, 1, kernel_size, kernel_size))
        self.jump = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.bpda_steepness = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.activation = Ternary()

    def forward(self, x):
        norms = self.weight.abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1) + L1_EPS
        y = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2) / norms
        return self.activation(y, self.jump)


class PolarizingCNNAuthors(nn.Module):
    """conv1 (25->32, 5×5, valid) -> maxpool 2 -> ReLU -> conv2 (32->64) -> maxpool 2 -> ReLU -> fc1 (1024->100)
    -> ReLU -> fc2 (100->10)."""

    def __init__(self, in_channels: int = 25, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(1024, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, z):
        z = F.relu(F.max_pool2d(self.conv1(z), 2))
        z = F.relu(F.max_pool2d(self.conv2(z), 2))
        return self.fc2(F.relu(self.fc1(z.flatten(1))))


class PolarizingAuthors(nn.Module):
    """Front end then classifier, on 28×28 grey images in [0, 1] (no normalization: the front end's Linf bound
    holds in pixel units)."""

    def __init__(self):
        super().__init__()
        self.frontend = PolarizingFrontEndAuthors()
        self.classifier = PolarizingCNNAuthors()

    def forward(self, x):
        return self.classifier(self.frontend(x))


def resnet32_cifar10() -> nn.Module:
    return ResNet32Authors()


def polarizing() -> nn.Module:
    """MNIST and Fashion-MNIST alike: the threshold (jump) is the checkpoint's own."""
    return PolarizingAuthors()
