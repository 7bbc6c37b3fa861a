"""Architectures shared by defenses. Inputs are images in [0, 1]; normalization is the model's first op,
so attacks work in pixel space."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, did_you_mean


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class MadryUnit(nn.Module):
    """Pre-activation residual unit of Madry et al.'s CIFAR ResNet (shortcut: avg-pool + zero channel padding).

    `conv_on_input`: in a unit that activates before the residual, conv1 takes the raw input instead of the
    activation, as in the layout the sparse-coding front end's published ResNet-32 checkpoints were trained with
    (defenses/_authors_models.py); bench's own ResNet feeds conv1 the activation everywhere."""

    def __init__(self, cin, cout, stride, activate_before_residual, conv_on_input=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.stride, self.cin, self.cout = stride, cin, cout
        self.activate_before_residual = activate_before_residual
        self.conv_on_input = conv_on_input and activate_before_residual

    def forward(self, x):
        act = F.leaky_relu(self.bn1(x), 0.1)
        shortcut = act if self.activate_before_residual else x
        out = self.conv1(x if self.conv_on_input else act)
        out = self.conv2(F.leaky_relu(self.bn2(out), 0.1))
        if self.stride != 1:
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
        if self.cin != self.cout:
            pad = (self.cout - self.cin) // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, pad, self.cout - self.cin - pad))
        return out + shortcut


class MadryResNet(nn.Module):
    """ResNet-32 of Madry et al. (non-wide: widths 16/32/64, 5 units per stage)."""

    def __init__(self, num_classes=10, widths=(16, 32, 64), units=5, in_channels=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        layers, cin = [], 16
        for stage, (w, stride) in enumerate(zip(widths, (1, 2, 2))):
            for u in range(units):
                layers.append(MadryUnit(cin, w, stride if u == 0 else 1, activate_before_residual=(stage == 0 and u == 0)))
                cin = w
        self.units = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.units(self.stem(x))
        x = F.leaky_relu(self.bn(x), 0.1)
        return self.fc(x.mean(dim=(2, 3)))


class MadryMnistCNN(nn.Module):
    """The MNIST challenge CNN of Madry et al.: two 5x5 conv+pool blocks, FC 1024, FC 10."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (image_size // 4) ** 2, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


ARCHS = {
    "resnet32": lambda info: MadryResNet(info.num_classes, in_channels=info.shape[0]),
    "madry_cnn": lambda info: MadryMnistCNN(info.num_classes, info.shape[0], info.shape[1]),
}


def build_classifier(arch: str, info) -> nn.Module:
    """Normalization + the named architecture, for a dataset described by `info` (bench.data.DatasetInfo)."""
    if arch not in ARCHS:
        raise ConfigError(f"Unknown architecture '{arch}'. {did_you_mean(arch, ARCHS)}")
    return nn.Sequential(Normalize(info.mean, info.std), ARCHS[arch](info))
