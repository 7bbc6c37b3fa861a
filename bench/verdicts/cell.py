"""The per-cell checks: attack-failure and gradient-masking verdicts, measured by bench on every cell, never
declared by a defense.

A robustness number is only as good as the attack behind it: an attack that gets zero gradients, follows
finite gradients that point nowhere (shattered), attacks a random model without EOT, optimises probabilities
instead of logits or stops before it converged reports robustness that is not there. The cheap checks below run inside every cell, on the points the attack sees and
at almost no extra cost (most numbers come from passes the attack makes anyway); `bench audit`
(bench/audit.py, its checks in bench/verdicts/audit_checks.py) adds the expensive ones and re-runs what an expert would.

Every check reports what it measured (the fraction of points affected), the threshold it compares with (from
[verdicts] in bench.toml) and a verdict: pass, warn (the attack may be weak), fail (the number is not a
robustness number) or skip (does not apply to this attack). The row stores them as JSON in its `checks` column;
tables mark warn/fail cells with ⚠ and the defense's worst case as unreliable on a fail.

Counts are kept as sums over batches and shards (`Probe`), and turned into verdicts once per cell (`finalize`),
so a sharded cell gets exactly the verdicts of the unsharded one."""
from __future__ import annotations

import contextlib
import json

import torch

from ..pgd import PGDSettings, _grad, attack_loss, dead_gradients  # noqa: F401  (dead_gradients: public here too)
from .settings import VerdictSettings

# ---------------------------------------------------------------- measurements (summed over batches)

def attack_loss_kind(atk) -> str:
    """The loss whose gradient the attack follows: its `loss` parameter, else what its class declares (`loss_kind`:
    FMN, FAB and the locally linear attacks step on a logit margin and have no loss parameter), else CE."""
    loss = str(getattr(atk.params, "loss", None) or getattr(type(atk), "loss_kind", "ce"))
    return loss if loss in ("ce", "cw") else "cw"  # APGD's DLR and other margin losses: the margin


class Probe:
    """Counts behind the per-cell checks of one attack run (one part of a cell); JSON-able via `state`."""

    def __init__(self, state: dict | None = None):
        self.state = state or {}

    def add(self, key: str, k: float, n: float) -> None:
        a = self.state.setdefault(key, [0, 0])
        a[0] += k
        a[1] += n

    def peak(self, key: str, value: float) -> None:
        self.state[key] = max(self.state.get(key, 0.0), float(value))

    @torch.no_grad()
    def model_probe(self, model, x: torch.Tensor, s: VerdictSettings, first: torch.Tensor | None = None) -> None:
        """Randomness and output form from `random_passes` forward passes of the same batch in eval mode; `first`:
        the logits of a pass already made on it (the gradient probe's), which then counts as the first pass."""
        outs = [first.detach().double()] if first is not None else []
        outs += [model(x).detach().double() for _ in range(s.random_passes - len(outs))]
        z0 = outs[0]
        scale = z0.abs().amax(1).clamp_min(1e-12)
        spread = torch.stack([(o - z0).abs().amax(1) / scale for o in outs[1:]]).amax(0)
        flips = torch.stack([o.argmax(1) != z0.argmax(1) for o in outs[1:]]).any(0)
        self.add("random_points", int((spread > s.random_tol).sum()), len(x))
        self.add("random_flips", int(flips.sum()), len(x))
        self.peak("random_spread", spread.max().item() if len(x) else 0.0)
        probs = (z0 >= 0).all(1) & ((z0.sum(1) - 1).abs() < s.prob_tol)
        self.add("output_probabilities", int(probs.sum()), len(x))

    def gradient_probe(self, model, x: torch.Tensor, y: torch.Tensor, atk, defense, s: VerdictSettings) -> torch.Tensor:
        """The input gradient of the attack's loss at the clean points, through the backward surrogate in use,
        computed exactly as the PGD engine computes its steps (float64 loss, per-sample logit rescale). Returns the
        logits of its forward pass (a surrogate changes the backward only), which model_probe reuses."""
        backward = str(getattr(atk.params, "backward", "autograd") or "autograd")
        settings = PGDSettings(loss=attack_loss_kind(atk), kappa=float(getattr(atk.params, "kappa", 50.0)))
        surrogate = defense.surrogate(model, backward) if defense is not None else contextlib.nullcontext(model)
        weights = [q for q in model.parameters() if q.requires_grad]
        try:
            for q in weights:  # input gradients only: spare the backward pass the weight-gradient work
                q.requires_grad_(False)
            with torch.enable_grad(), surrogate as m:
                x_in = x.detach().clone().requires_grad_(True)
                _, logits, g = _grad(m, x_in, y, settings)
        finally:
            for q in weights:
                q.requires_grad_(True)
        dead = dead_gradients(g, s.grad_vanishing)
        self.add("grad_clean", int(dead.sum()), len(x))
        live = ~dead.to(x.device)
        self.step_probe(model, x[live], y[live], g[live], logits[live], atk, settings, s)
        return logits

    @torch.no_grad()
    def step_probe(self, model, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, logits: torch.Tensor, atk,
                   settings: PGDSettings, s: VerdictSettings) -> None:
        """Shattered gradients (finite, non-zero, useless): does one step along the gradient raise the loss of the
        true model more than a random step of the same size? The step is the attack's steepest-ascent direction
        (sign(g) in Linf, g in L2 and L1) scaled to shattered_step·eps in the attack's norm; the random step has the
        same norm (Rademacher in Linf, Gaussian in L2 and L1). A point is counted when the gradient step's loss gain
        is no larger than the random step's |gain|: on an honest model the gradient step gains ~sqrt(d) times
        more; where the gradient carries no information about the loss at the attack's scale, they gain alike.
        Two forward passes, no backward (the loss at x is the gradient pass's); the loss is the attack's own,
        through the model (never a surrogate's forward)."""
        norm, eps = getattr(atk, "norm", None), getattr(atk, "eps", None)
        if norm not in ("linf", "l2", "l1") or not eps or not len(x):
            return
        gen = torch.Generator().manual_seed(0)  # a fixed direction per point: verdicts reproduce, the RNG is untouched
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)
        if norm == "linf":
            ascent, rand = g.sign(), noise.sign()
        else:
            ascent, rand = g.double(), noise
        h = float(s.shattered_step) * float(eps)
        order = {"linf": float("inf"), "l2": 2, "l1": 1}[norm]

        def scaled(v):
            return (v * h / _view_norm(v, order)).to(x.dtype)

        def loss(z):
            return attack_loss(z.double(), y, settings.loss, settings.kappa)

        base = loss(logits)
        gain_g = loss(model((x + scaled(ascent)).clamp(0, 1))) - base
        gain_r = loss(model((x + scaled(rand)).clamp(0, 1))) - base
        useless = ~(gain_g > gain_r.abs())  # (NaN gains count as useless too)
        self.add("grad_useless", int(useless.sum()), len(x))

    def trace(self, trace: dict | None, robust: torch.Tensor, s: VerdictSettings) -> None:
        """The PGD engine's own record (bench.pgd.run_pgd(trace=...)): dead gradients at the attack's start and
        the running best loss of the first restart, judged on the points that survived the attack."""
        if not trace or "start_dead" not in trace:  # the attack does not run on the PGD engine
            return
        self.add("grad_start", int(trace["start_dead"].sum()), int(trace["start_seen"].sum()))
        steps = int(trace["steps"])
        self.state["steps"] = steps
        if steps < s.incomplete_min_steps:
            return
        keep = robust.to(trace["final"].device) & torch.isfinite(trace["final"]) & torch.isfinite(trace["window"])
        start, window, final = trace["start"][keep], trace["window"][keep], trace["final"][keep]
        late = final - window
        total = (final - start).clamp_min(0)
        improving = (late > s.incomplete_gain * total) & (late > 1e-9)
        self.add("incomplete", int(improving.sum()), int(keep.sum()))


def _view_norm(v: torch.Tensor, order: float) -> torch.Tensor:
    n = v.flatten(1).norm(p=order, dim=1).clamp_min(1e-300)
    return n.view(-1, *([1] * (v.dim() - 1)))


def merge_probes(states: list[dict]) -> dict:
    out = Probe()
    for st in states:
        for key, v in st.items():
            if isinstance(v, list):
                out.add(key, v[0], v[1])
            elif key == "random_spread":
                out.peak(key, v)
            else:
                out.state[key] = v
    return out.state


# ---------------------------------------------------------------- verdicts

def _check(verdict: str, short: str, reason: str, fraction=None, threshold=None, n=None) -> dict:
    out = {"verdict": verdict, "short": short, "reason": reason}
    if fraction is not None:
        out["fraction"] = round(float(fraction), 6)
    if threshold is not None:
        out["threshold"] = threshold
    if n is not None:
        out["n"] = int(n)
    return out


def _frac(pair) -> tuple[float, int]:
    k, n = pair if pair else (0, 0)
    return (k / n if n else 0.0), n


def finalize(state: dict, s: VerdictSettings, attack: dict) -> dict:
    """The verdict of every per-cell check from the summed probe counts. `attack` describes the attack run:
    gradient_based, eot (passes per step), loss, backward."""
    checks: dict = {}
    loss, backward = attack.get("loss", "ce"), attack.get("backward", "autograd") or "autograd"
    if not attack.get("gradient_based"):
        checks["gradient_health"] = _check("skip", "no gradients", "the attack does not use the model's gradients")
    else:
        f_clean, n_clean = _frac(state.get("grad_clean"))
        f_start, n_start = _frac(state.get("grad_start"))
        f, where = (f_clean, "the clean point") if f_clean >= f_start or not n_start else (f_start, "the attack's start")
        verdict = "fail" if f > s.grad_fail else "warn" if f > s.grad_warn else "pass"
        checks["gradient_health"] = _check(
            verdict, "zero gradients" if verdict != "pass" else "gradients ok",
            f"input gradient of the {loss.upper()} loss (backward {backward}) exactly zero, NaN/Inf or vanishing on "
            f"{f:.1%} of points at {where} (clean {f_clean:.1%} of {n_clean}, start {f_start:.1%} of {n_start}): "
            + ("gradient masking or a broken backward; try a BPDA surrogate, the margin loss or a black-box attack"
               if verdict != "pass" else "healthy"),
            f, s.grad_warn if verdict != "fail" else s.grad_fail, n_clean)
    f_rand, n_rand = _frac(state.get("random_points"))
    f_flip, _ = _frac(state.get("random_flips"))
    stochastic = f_rand > s.random_warn
    eot = int(attack.get("eot", 1))
    if not stochastic:
        checks["randomness"] = _check("pass", "deterministic",
                                      f"{s.random_passes} passes of the same batch agree (max relative logit spread "
                                      f"{state.get('random_spread', 0.0):.2g})", f_rand, s.random_warn, n_rand)
    else:
        what = (f"the model is stochastic: {f_rand:.1%} of points change logits across {s.random_passes} passes in "
                f"eval mode (max relative spread {state.get('random_spread', 0.0):.2g}), {f_flip:.1%} change prediction")
        if attack.get("gradient_based") and eot <= 1:
            checks["randomness"] = _check("fail", "random, no EOT", what + "; attacked without EOT (1 pass per step): "
                                          "use an EOT attack", f_rand, s.random_warn, n_rand)
        else:
            how = f"attacked with EOT ({eot} passes)" if attack.get("gradient_based") else "a gradient-free attack"
            checks["randomness"] = _check("pass", "random, EOT", f"{what}; {how}", f_rand, s.random_warn, n_rand)
    f_prob, n_prob = _frac(state.get("output_probabilities"))
    if f_prob > s.prob_fail:
        checks["output_form"] = _check("fail", "returns probabilities",
                                       f"{f_prob:.1%} of output rows are non-negative and sum to 1: the model returns "
                                       f"probabilities; attacks need logits", f_prob, s.prob_fail, n_prob)
    else:
        checks["output_form"] = _check("pass", "logits", "outputs do not look like probabilities", f_prob,
                                       s.prob_fail, n_prob)
    if "incomplete" in state and stochastic:
        checks["incomplete_optimization"] = _check("skip", "random model", "the loss of a stochastic model is noisy: "
                                                   "its running best rises by chance; the randomness check covers it")
    elif "incomplete" in state:
        f_inc, n_inc = _frac(state["incomplete"])
        verdict = "warn" if f_inc > s.incomplete_warn and n_inc >= s.incomplete_min_points else "pass"
        checks["incomplete_optimization"] = _check(
            verdict, "not converged" if verdict == "warn" else "converged",
            f"the running best loss of {f_inc:.1%} of the {n_inc} surviving points still rose by more than "
            f"{s.incomplete_gain:g} of its total gain over the last {s.incomplete_window:.0%} of the "
            f"{state.get('steps', 0)} steps" + (": not converged, use more steps or a larger step"
                                                if verdict == "warn" else ""), f_inc, s.incomplete_warn, n_inc)
    else:
        why = ("single-step attack" if state.get("steps", 99) < s.incomplete_min_steps
               else "the attack records no per-step loss")
        checks["incomplete_optimization"] = _check("skip", "no trace", why)
    checks["shattered_gradients"] = _shattered(state, s, attack, stochastic)
    if "silent" in state and stochastic:
        checks["silent_success"] = _check("skip", "random model", "a stochastic model may answer a point differently "
                                          "each time; the randomness check covers it")
    elif "silent" in state:
        f_sil, n_sil = _frac(state["silent"])
        verdict = "warn" if f_sil > s.silent_warn else "pass"
        checks["silent_success"] = _check(
            verdict, "lost successes" if verdict == "warn" else "returned what it found",
            f"on {f_sil:.1%} of the {n_sil} attacked points an iterate fooled the model but the returned point does not"
            + (": the attack returns the wrong iterate (or the model is random)" if verdict == "warn" else ""),
            f_sil, s.silent_warn, n_sil)
    else:
        checks["silent_success"] = _check("skip", "no verdict", "the attack's own verdict is not about this model")
    return checks


def _shattered(state: dict, s: VerdictSettings, attack: dict, stochastic: bool) -> dict:
    if not attack.get("gradient_based"):
        return _check("skip", "no gradients", "the attack does not use the model's gradients")
    if stochastic:
        return _check("skip", "random model", "a stochastic model's loss changes by chance from pass to pass; the "
                      "randomness check covers it")
    if "grad_useless" not in state:
        return _check("skip", "no verdict", "no live gradient to test, or the attack has no Linf/L2/L1 budget")
    f, n = _frac(state["grad_useless"])
    verdict = "fail" if f > s.shattered_fail else "warn" if f > s.shattered_warn else "pass"
    return _check(
        verdict, "shattered gradients" if verdict != "pass" else "gradients informative",
        f"on {f:.1%} of {n} points with a live gradient, a step of {s.shattered_step:g}·eps along the "
        f"{attack.get('loss', 'ce').upper()} gradient (backward {attack.get('backward') or 'autograd'}) raised the "
        f"loss no more than a random step of the same size" +
        (": shattered gradients (finite, non-zero, pointing nowhere): use a BPDA surrogate, EOT over the "
         "transformation, or a black-box attack" if verdict != "pass" else ""),
        f, s.shattered_warn if verdict != "fail" else s.shattered_fail, n)


def worst(checks: dict) -> str:
    order = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}
    return max((c["verdict"] for c in checks.values()), key=order.get, default="skip")


def warnings_of(checks: dict) -> list[str]:
    """One log line per warn/fail check."""
    return [f"{c['verdict']}: {name}: {c['reason']}" for name, c in checks.items() if c["verdict"] in ("warn", "fail")]


def to_column(checks: dict) -> str:
    return json.dumps(checks, sort_keys=True) if checks else ""


def from_column(text: str) -> dict:
    try:
        out = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}
