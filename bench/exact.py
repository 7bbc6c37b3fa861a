"""Exact fp32 arithmetic for attacks and verdicts on GPUs.

PyTorch lets cuDNN convolutions run in TF32 by default (10-bit mantissa on Ampere and newer GPUs), and
cudnn.benchmark picks a kernel per input shape, so the same image can get a different logit depending on the
batch it sits in. Training does not care; attacks do. Measured on an H200 (quick natural ResNet-32, the same
checkpoint and 100 points): HopSkipJump reached mean L2 1.66 on the GPU and 0.32 on the CPU, because its
binary searches and sign estimates live within ~1e-5 of the boundary, where TF32 rounding answers at random;
on the sparse front end foolbox even caught the oracle answering the same query differently. Finite-difference
attacks (ZOO, h = 1e-4) and the final verdict of every attack (a point on the boundary) are exposed the same
way. Inside `exact_fp32()` convolutions and matmuls are true fp32 and cuDNN picks deterministic kernels
without per-shape autotuning; an attack that wants bf16 speed asks for autocast explicitly and the harness's
verdict re-checks in fp32."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def exact_fp32():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    cudnn.allow_tf32 = matmul.allow_tf32 = cudnn.benchmark = False
    cudnn.deterministic = True
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved
