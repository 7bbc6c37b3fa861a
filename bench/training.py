"""The one training loop. A defense supplies `batch_loss` (and optional per-epoch metrics); this loop owns
optimisation, LR schedule, augmentation, logging and per-epoch resumable state."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import progress
from .store import atomic_torch_save, safe_torch_load


def lr_at(params, step: int, steps_per_epoch: int) -> float:
    total = max(1, params.epochs * steps_per_epoch)
    if params.schedule == "cyclic":  # one triangle 0 → lr → 0 over the whole run, stepped per batch
        return float(np.interp(step + 1, [0, total / 2, total], [0.0, params.lr, 0.0]))
    if params.schedule == "multistep":  # stepped per epoch
        epoch = step // steps_per_epoch
        return params.lr * params.gamma ** sum(epoch >= m for m in params.milestones)
    return params.lr


def make_optimizer(params, model: nn.Module) -> torch.optim.Optimizer:
    # frozen parameters (requires_grad False, e.g. a fixed dictionary) are left out; parameters frozen later
    # simply get no gradient, which both optimizers skip
    trainable = [q for q in model.parameters() if q.requires_grad]
    if params.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(trainable, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding=pad) + RandomHorizontalFlip on a whole batch at once."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    return padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 500) -> float:
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size].to(device)).argmax(1) == y[i:i + batch_size].to(device)).sum().item()
    model.train(was_training)
    return correct / len(x)


def fit(defense, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, monitor, device, seed: int,
        state_path: Path | None = None) -> list[dict]:
    """Train `model` in place. `x_train` is uint8 N×C×H×W. Returns the per-epoch history.
    With `state_path`, the state after each epoch is saved atomically and a restarted run resumes from it."""
    # cuDNN autotuning is for this training only: a surrogate trained inside an attack (transfer) must hand the
    # attack back its exact, non-autotuned arithmetic (bench/exact.py)
    autotune = torch.backends.cudnn.benchmark
    try:
        return _fit(defense, model, x_train, y_train, monitor, device, seed, state_path)
    finally:
        torch.backends.cudnn.benchmark = autotune


def _fit(defense, model, x_train, y_train, monitor, device, seed, state_path) -> list[dict]:
    p = defense.params
    model.to(device).train()
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:  # fixed input shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True
    if p.channels_last:
        model.to(memory_format=torch.channels_last)
    use_amp = p.amp and on_cuda
    optimizer = make_optimizer(p, model)
    steps_per_epoch = (len(x_train) + p.batch_size - 1) // p.batch_size
    history: list[dict] = []
    start_epoch = 0
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if state_path is not None and state_path.exists():
        state = safe_torch_load(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"]
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        progress.log(f"resuming training of {defense.name} at epoch {start_epoch + 1}/{p.epochs}")
    mon_x, mon_y = monitor
    for epoch in range(start_epoch, p.epochs):
        t0 = time.time()
        defense.start_epoch(model, epoch)
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        with progress.bar(f"{defense.name} epoch {epoch + 1}/{p.epochs}", steps_per_epoch) as advance:
            for i in range(steps_per_epoch):
                idx = order[i * p.batch_size:(i + 1) * p.batch_size]
                x = x_train[idx].to(device).float().div_(255.0)
                y = y_train[idx].to(device)
                if p.augment == "crop_flip":
                    x = crop_flip(x, gen)
                if p.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = lr_at(p, epoch * steps_per_epoch + i, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # bfloat16 keeps fp32's range, so no loss scaling and no underflow in inner-attack gradients
                defense.progress = epoch + i / steps_per_epoch
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                    loss, logits = defense.batch_loss(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                advance(loss=loss_sum / seen, acc=correct / seen)
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
               "test_acc": accuracy(model, mon_x, mon_y, device), "lr_end": lr, "seconds": time.time() - t0}
        row.update(defense.epoch_metrics(model, monitor, history))
        model.train()
        history.append(row)
        progress.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if state_path is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                               "history": history, "generator": gen.get_state(), "torch_rng": torch.get_rng_state()},
                              state_path)
    model.eval()
    return history
