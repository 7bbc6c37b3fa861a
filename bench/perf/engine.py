"""The attack engine's cost, measured on one model and one batch in one run (`bench perf`):

(a) our PGD step time / a bare forward+backward (the limit of any gradient attack),
(b) torchattacks PGD time / ours and foolbox LinfPGD time / ours (same eps, step, steps, random start; each
    contender ends with the verdict forward a robust-accuracy number needs: ours and foolbox include it,
    torchattacks returns bare examples, so its contender adds that one forward),
(c) model passes per image of PGD-40 x 10 restarts with per-point early exit vs without.

Timings interleave the contenders repetition by repetition and keep medians, so background load on a shared
machine hits all of them alike; report ratios from one run, not absolute seconds across runs."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..attack import PassCounter
from ..pgd import PGDSettings, run_pgd


@dataclass
class PerfResult:
    device: str
    threads: int
    n: int
    eps: float
    steps: int
    step_size: float
    repeats: int
    seconds: dict = field(default_factory=dict)  # median wall time of each contender
    ratios: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)  # (c): per-image forward/backward passes

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_forward_backward(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return g


def _bare_forward(model, x):
    with torch.no_grad():
        return model(x)


def _verdict(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _pgd(model, x, y, s: PGDSettings, seed: int = 0):
    return run_pgd(model, x, y, s, torch.Generator().manual_seed(seed))


def _contenders(model, x, y, s: PGDSettings) -> dict:
    """name -> zero-argument callable; the reference libraries are imported only here."""
    import foolbox as fb
    import torchattacks

    ta = torchattacks.PGD(model, eps=s.eps, alpha=s.step_size, steps=s.steps, random_start=True)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
    fbatk = fb.attacks.LinfPGD(abs_stepsize=s.step_size, steps=s.steps, random_start=True)
    plain = PGDSettings(**{**asdict(s), "early_stop": False})
    return {
        "forward_backward": lambda: _bare_forward_backward(model, x, y),
        "forward": lambda: _bare_forward(model, x),
        "ours": lambda: _pgd(model, x, y, plain),
        "ours_early_exit": lambda: _pgd(model, x, y, s),
        "torchattacks": lambda: _verdict(model, ta(x, y), y),
        "foolbox": lambda: fbatk(fmodel, x, y, epsilons=s.eps),
    }


def time_contenders(fns: dict, repeats: int, device: torch.device) -> dict:
    for fn in fns.values():  # warm-up: allocator, kernels, lazy imports
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def count_passes(model, x, y, s: PGDSettings) -> dict:
    """Per-image forward and backward passes of one run of `s`, and the fraction of points left robust."""
    counter = PassCounter(model)
    _, fooled = _pgd(counter, x, y, s)
    n = len(y)
    return {"forward": counter.forward_images / n, "backward": counter.backward_images / n,
            "robust_fraction": float((~fooled).float().mean())}


def measure(model, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, steps: int = 10,
            step_size: float | None = None, repeats: int = 3, c_steps: int = 40, c_restarts: int = 10,
            skip_c: bool = False) -> PerfResult:
    """All three measurements on `model` and the batch (x, y) (which should be correctly classified)."""
    model = model.eval()
    trainable = [q for q in model.parameters() if q.requires_grad]
    for q in trainable:  # input gradients only, for every contender alike
        q.requires_grad_(False)
    try:
        return _measure(model, x, y, eps, steps, step_size, repeats, c_steps, c_restarts, skip_c)
    finally:
        for q in trainable:
            q.requires_grad_(True)


def _measure(model, x, y, eps, steps, step_size, repeats, c_steps, c_restarts, skip_c) -> PerfResult:
    step_size = step_size if step_size is not None else eps / 4
    s = PGDSettings(norm="linf", eps=eps, steps=steps, step_size=step_size, restarts=1)
    res = PerfResult(device=str(x.device), threads=torch.get_num_threads(), n=len(y), eps=eps, steps=steps,
                     step_size=step_size, repeats=repeats)
    t = time_contenders(_contenders(model, x, y, s), repeats, x.device)
    res.seconds = t
    limit = steps * t["forward_backward"] + t["forward"]  # `steps` gradients + the final iterate's verdict
    res.ratios = {
        "a_ours_step_over_bare_forward_backward": t["ours"] / limit,
        "b_torchattacks_over_ours": t["torchattacks"] / t["ours"],
        "b_foolbox_over_ours": t["foolbox"] / t["ours"],
        "b_torchattacks_over_ours_early_exit": t["torchattacks"] / t["ours_early_exit"],
        "b_foolbox_over_ours_early_exit": t["foolbox"] / t["ours_early_exit"],
    }
    if not skip_c:
        c = PGDSettings(norm="linf", eps=eps, steps=c_steps, step_size=eps / 8, restarts=c_restarts)
        with_exit = count_passes(model, x, y, c)
        without = count_passes(model, x, y, PGDSettings(**{**asdict(c), "early_stop": False}))
        r = with_exit["robust_fraction"]
        res.passes = {"steps": c_steps, "restarts": c_restarts, "early_exit": with_exit, "no_early_exit": without,
                      "robust_fraction": r, "expected_backward": c_steps * (1 + (c_restarts - 1) * r),
                      "saving": without["backward"] / max(with_exit["backward"], 1e-12)}
    return res


def format_result(res: PerfResult) -> str:
    t, r = res.seconds, res.ratios
    lines = [f"bench perf on {res.device} ({res.threads} threads): batch n={res.n}, Linf eps={res.eps:.5g}, "
             f"{res.steps} steps of {res.step_size:.5g}, 1 restart, medians of {res.repeats} interleaved repeats",
             f"  bare forward+backward {t['forward_backward']:.3f}s, forward {t['forward']:.3f}s",
             f"  ours {t['ours']:.3f}s (no early exit) / {t['ours_early_exit']:.3f}s (early exit), "
             f"torchattacks {t['torchattacks']:.3f}s, foolbox {t['foolbox']:.3f}s",
             f"(a) ours / ({res.steps} x forward+backward + 1 forward) = "
             f"{r['a_ours_step_over_bare_forward_backward']:.3f}   (target <= 1.05)",
             f"(b) torchattacks / ours = {r['b_torchattacks_over_ours']:.2f} (target >= 1.0), "
             f"foolbox / ours = {r['b_foolbox_over_ours']:.2f} (target >= 1.4)   [no early exit]",
             f"    with early exit: torchattacks / ours = {r['b_torchattacks_over_ours_early_exit']:.2f}, "
             f"foolbox / ours = {r['b_foolbox_over_ours_early_exit']:.2f}"]
    if res.passes:
        p = res.passes
        lines.append(f"(c) PGD-{p['steps']} x {p['restarts']} restarts, per image: early exit "
                     f"{p['early_exit']['backward']:.1f} backward / {p['early_exit']['forward']:.1f} forward, "
                     f"without {p['no_early_exit']['backward']:.1f} / {p['no_early_exit']['forward']:.1f} "
                     f"(x{p['saving']:.1f}); robust fraction {p['robust_fraction']:.3f} -> "
                     f"{p['steps']}·(1 + {p['restarts'] - 1}·r) = {p['expected_backward']:.1f}")
    return "\n".join(lines)
