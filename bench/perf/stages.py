"""Where a model's forward and forward+backward time goes, stage by stage (`bench perf-stages`).

A model that can be split exposes `stages(x)`: (name, function) pairs whose composition is its forward. Each
prefix of the chain is timed (forward alone, and forward + input gradient as an attack computes it, through
the backward surrogate in force); a stage's cost is the difference between consecutive prefixes. Prefixes are
interleaved repetition by repetition and medians kept, so background load hits them alike."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BenchError
from .engine import time_contenders


@dataclass
class StageCosts:
    device: str
    threads: int
    n: int
    repeats: int
    surrogate: str
    stages: list = field(default_factory=list)  # names, in forward order
    forward: dict = field(default_factory=dict)  # stage -> seconds (forward only, no autograd graph)
    forward_backward: dict = field(default_factory=dict)  # stage -> seconds (forward + input gradient)
    whole_forward_backward: float = 0.0  # the unsplit model, as a check that the stages add up

    def shares(self, which: str = "forward_backward") -> dict:
        costs = getattr(self, which)
        total = sum(max(v, 0.0) for v in costs.values()) or 1.0
        return {k: max(v, 0.0) / total for k, v in costs.items()}

    def as_dict(self) -> dict:
        return asdict(self) | {"shares_forward": self.shares("forward"),
                               "shares_forward_backward": self.shares("forward_backward")}


def staged_module(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if callable(getattr(m, "stages", None)):
            return m
    raise BenchError("This defense's model cannot be split into stages: only models that define `stages(x)` "
                     "(e.g. the sparse-coding front end: sparse, sparse_dropout, sparse_ae) can be broken down.")


def _prefix(stages, k: int, x, y, grad: bool, cotangent: dict):
    last = k == len(stages)

    def run():
        h = x.detach().clone().requires_grad_(True) if grad else x
        with torch.enable_grad() if grad else torch.no_grad():
            out = h
            for _, f in stages[:k]:
                out = f(out)
            if grad:
                if last:
                    loss = F.cross_entropy(out.float(), y, reduction="sum")
                else:  # a fixed random cotangent, so the backward does the work a real one does
                    r = cotangent.setdefault(k, torch.randn(out.shape, generator=torch.Generator().manual_seed(k)))
                    loss = (out.float() * r.to(out.device)).sum()
                torch.autograd.grad(loss, h)

    return run


def measure_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                   surrogate: str = "autograd") -> StageCosts:
    """Per-stage forward and forward+input-gradient seconds of `model` (eval mode, parameters frozen) on (x, y);
    the backward surrogate must already be in force (the caller enters the defense's `surrogate` context)."""
    model = model.eval()
    frozen = [q for q in model.parameters() if q.requires_grad]
    for q in frozen:
        q.requires_grad_(False)
    try:
        staged = staged_module(model)
        stages = staged.stages(x)
        cot: dict = {}
        fns = {}
        for k in range(1, len(stages) + 1):
            fns[("fwd", k)] = _prefix(stages, k, x, y, False, cot)
            fns[("fwdbwd", k)] = _prefix(stages, k, x, y, True, cot)
        fns[("whole", 0)] = _prefix([("model", model)], 1, x, y, True, cot)
        t = time_contenders(fns, repeats, x.device)
    finally:
        for q in frozen:
            q.requires_grad_(True)
    res = StageCosts(device=str(x.device), threads=torch.get_num_threads(), n=len(y), repeats=repeats,
                     surrogate=surrogate, stages=[name for name, _ in stages],
                     whole_forward_backward=t[("whole", 0)])
    for kind, field_ in (("fwd", res.forward), ("fwdbwd", res.forward_backward)):
        prev = 0.0
        for k, (name, _) in enumerate(stages, start=1):
            field_[name] = t[(kind, k)] - prev
            prev = t[(kind, k)]
    return res


def format_stages(res: StageCosts, classifier: str = "classifier") -> str:
    sf, sb = res.shares("forward"), res.shares("forward_backward")
    lines = [f"bench perf-stages on {res.device} ({res.threads} threads): batch n={res.n}, surrogate "
             f"'{res.surrogate}', medians of {res.repeats} interleaved repeats",
             f"  {'stage':<20} {'forward s':>10} {'share':>6}   {'fwd+bwd s':>10} {'share':>6}"]
    for name in res.stages:
        lines.append(f"  {name:<20} {res.forward[name]:>10.4f} {sf[name]:>6.1%}   "
                     f"{res.forward_backward[name]:>10.4f} {sb[name]:>6.1%}")
    front = [n for n in res.stages if n != classifier]
    if classifier in res.stages and front:
        fb = sum(res.forward_backward[n] for n in front)
        lines.append(f"  front end ({' + '.join(front)}): {sum(sf[n] for n in front):.1%} of the forward, "
                     f"{sum(sb[n] for n in front):.1%} of forward+backward = "
                     f"{fb / max(res.forward_backward[classifier], 1e-12):.2f} x the classifier's")
    lines.append(f"  sum of stages {sum(res.forward_backward.values()):.4f}s vs the whole model's forward+backward "
                 f"{res.whole_forward_backward:.4f}s")
    return "\n".join(lines)
