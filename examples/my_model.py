"""An example model factory for `bench run --model examples/my_model.py:small_cnn --weights my_model.pt`.

A factory takes no arguments and returns an nn.Module that takes images in [0, 1] (N×3×32×32 for CIFAR-10) and
returns logits (N×10). Normalization belongs inside the model (first layer here), so that attacks and their
budgets work in pixel space.

    python examples/my_model.py my_model.pt    # a stand-in for your own weights: about half a minute of training on 4096 images
"""
import sys

import torch
import torch.nn as nn

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def small_cnn() -> nn.Module:
    """A CIFAR-10 CNN of ~67k parameters."""
    return nn.Sequential(
        Normalize(CIFAR10_MEAN, CIFAR10_STD),
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))  # sized for 32×32 inputs: another shape fails, not averages away


def train_briefly(path: str, data_root: str | None = None, n: int = 4096, epochs: int = 2, seed: int = 0) -> None:
    """Write a state_dict of `small_cnn` trained for a few seconds: only so that the example has weights."""
    from bench import load_split, resolve_data_root

    torch.manual_seed(seed)
    x, y = load_split("cifar10", "train", str(resolve_data_root(data_root)))
    x, y = x[:n].float() / 255, y[:n]
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in torch.randperm(n).split(128):
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    train_briefly(sys.argv[1] if len(sys.argv) > 1 else "my_model.pt")
