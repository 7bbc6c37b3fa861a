"""`bench audit`: the expensive attack-failure checks and the attacks an expert would add, on one defense and
one threat model, every variant on the same test points so that per-point outcomes pair up.

Checks (thresholds in [verdicts.audit] of bench.toml): 6 unbounded sanity (eps = the whole image box must fool
~every point), 7 budget and effort monotonicity (accuracy falls with eps; 5x steps or restarts must not fool
significantly more), 8 loss disagreement (CE vs margin), 9 black-box beats white-box, 10 single-step beats
iterative. Paired outcomes are compared with an exact one-sided McNemar test, so "beyond the noise" means the
same thing on every n. Adaptation: when the per-cell checks fire (zero gradients, randomness) or a paired check
fails, the adapted attacks (EOT, the defense's BPDA surrogates, the other loss, the black-box attacks) are part
of the run, and the defense's number for the threat model is the per-point worst case over all of them."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import torch

from . import progress, provenance, verdicts
from .attack import AttackContext, PassCounter
from .data import load_subset
from .errors import BenchError
from .exact import exact_fp32
from .runner import (Env, attack_batch_size, attack_points, attack_traits, harness_services, predict, train,
                     verdict_settings)
from .stats import wilson_interval
from .store import content_hash
from .verdicts.audit_reports import report_path, write

DEFAULT_ATTACK = {"linf": "pgd_linf", "l2": "pgd_l2", "l1": "pgd_l1"}
# the variant roles `--only` can pick (the base attack always runs: every check compares against it)
ROLES = ("unbounded", "budget", "effort", "loss", "single_step", "black_box", "adapted")


def parse_only(text: str | None) -> tuple[str, ...]:
    """'effort,black_box' -> ('black_box', 'effort'); None or '' -> () (every role)."""
    roles = tuple(sorted({r.strip() for r in (text or "").split(",") if r.strip()}))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise BenchError(f"--only {text!r}: unknown role {', '.join(map(repr, bad))}; allowed: {', '.join(ROLES)} "
                         f"(comma-separated).")
    return roles


def parse_threat_model(text: str) -> tuple[str, float]:
    """'linf:8/255' -> ('linf', 0.0313...)."""
    from .params import parse_number

    norm, _, eps = (text or "").partition(":")
    if norm not in DEFAULT_ATTACK or not eps:
        raise BenchError(f"--threat-model {text!r}: expected NORM:EPS with NORM one of {', '.join(DEFAULT_ATTACK)}, "
                         f"e.g. linf:8/255 or l2:0.5.")
    try:
        value = parse_number(eps)
    except ValueError as e:
        raise BenchError(f"--threat-model {text!r}: {e}.") from None
    if not (math.isfinite(value) and value > 0):
        raise BenchError(f"--threat-model {text!r}: eps must be a finite number > 0.")
    return norm, value


def box_radius(norm: str, d: int) -> float:
    """The radius of the norm ball that holds the whole image box [0, 1]^d around any point."""
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


@dataclass
class Variant:
    label: str  # what it is, e.g. "eps x0.5"
    role: str  # base | budget | effort | loss | single_step | black_box | adapted | unbounded
    atk: object
    eps_factor: float = 1.0


def _with(atk, **update):
    fields = type(atk.params).model_fields
    kept = {k: v for k, v in update.items() if k in fields}
    params = type(atk.params).model_validate({**atk.params.model_dump(), **kept})
    return type(atk)(params)


def _scaled(atk, factor: float, steps: int | None = None):
    """The attack at factor * eps, its step scaled alike (an absolute step would otherwise not reach the new
    budget); steps optionally changed."""
    p = atk.params
    n_steps = steps or getattr(p, "steps", 1)
    update = {"eps": p.eps * factor}
    if hasattr(p, "settings"):  # PGD-engine params know their absolute step
        update["step_size"] = p.settings().step_size * factor
    if steps:
        update["steps"] = n_steps
    return _with(atk, **update)


def variants(env: Env, base, defense, dataset: str, profile: str, norm: str, eps: float, dim: int) -> list[Variant]:
    cfg, a = env.cfg, verdict_settings(env.cfg).audit
    p = base.params
    out = [Variant("base", "base", base)]
    out.append(Variant("unbounded", "unbounded", _scaled(base, box_radius(norm, dim) / eps), box_radius(norm, dim) / eps))
    for f in a.budget_factors:
        out.append(Variant(f"eps x{f:g}", "budget", _scaled(base, f), f))
    if "steps" in type(p).model_fields:
        # the same absolute step, so 5x the steps is 5x the path (a step of eps*F/steps would shrink with them)
        step = {"step_size": p.settings().step_size} if hasattr(p, "settings") else {}
        out.append(Variant(f"steps x{a.effort_factor}", "effort", _with(base, steps=p.steps * a.effort_factor, **step)))
    elif "n_iter" in type(p).model_fields:
        out.append(Variant(f"iterations x{a.effort_factor}", "effort", _with(base, n_iter=p.n_iter * a.effort_factor)))
    for key in ("restarts", "n_restarts"):
        if key in type(p).model_fields:
            out.append(Variant(f"restarts x{a.effort_factor}", "effort", _with(base, **{key: getattr(p, key) * a.effort_factor})))
    if "loss" in type(p).model_fields:
        other = "cw" if p.loss == "ce" else "ce"
        out.append(Variant(f"loss {other.upper()}", "loss", _with(base, loss=other)))
    for name, role in [(a.single_step_attack, "single_step"), *[(n, "black_box") for n in a.black_box]]:
        res = cfg.attack(name, dataset, profile)
        # the audited threat model, whatever the entry's own: _with sets only the fields the attack has (a transfer
        # attack passes them on to its surrogate-side PGD, which keeps its step the same fraction of eps)
        out.append(Variant(name, role, _with(res.cls(res.params), eps=eps, norm=norm)))
    if "eot_samples" in type(p).model_fields:
        out.append(Variant(f"EOT x{a.eot_samples}", "adapted:randomness",
                           _with(base, eot_samples=a.eot_samples, eot_mode="normalized")))
    if "backward" in type(p).model_fields:
        for spec in audit_surrogates(defense):
            if spec in ("", "autograd", p.backward):
                continue
            out.append(Variant(f"BPDA {spec}", "adapted:bpda", _with(base, backward=spec)))
    return out


def audit_surrogates(defense) -> tuple[str, ...]:
    """The backward surrogates the audit tries: the defense's `audit_surrogates` (concrete instances of templates
    such as 'smooth:S'), else its concrete `surrogates` (a spec with an upper-case placeholder is a template)."""
    declared = getattr(defense, "audit_surrogates", ()) or ()
    return tuple(declared) or tuple(s for s in getattr(defense, "surrogates", ()) or ()
                                    if not re.search(r":[A-Z]", s))


def _needed(role: str, checks: dict) -> bool:
    """EOT runs only when the base attack's randomness check found a stochastic model. The defense's BPDA
    surrogates always run: a straight-through (identity) backward gives gradients that look healthy to every
    per-cell check yet can be much weaker than a smooth surrogate (polarizing at smoke: 25.5 % robust with the
    identity backward, 18.5 % with smooth:32, with no per-cell flag)."""
    if role == "adapted:randomness":
        return checks.get("randomness", {}).get("short", "").startswith("random")
    return True


def audit(env: Env, defense: str, dataset: str, profile: str, seed: int, attack: str | None = None,
          threat_model: str | None = None, n_test: int | None = None, only: tuple[str, ...] | str = ()) -> dict:
    """only: the variant roles to run besides the base attack (empty = all); a partial audit's checks cover
    those roles only, so its report is kept apart and never shown on the leaderboard."""
    cfg = env.cfg
    only = parse_only(only if isinstance(only, str) else ",".join(only))
    s = verdict_settings(cfg).audit
    prof = cfg.profiles[profile]
    if threat_model:
        norm, eps = parse_threat_model(threat_model)
    else:
        norm, eps = None, None
    attack = attack or DEFAULT_ATTACK[norm or "linf"]
    ares = cfg.attack(attack, dataset, profile)
    base = ares.cls(ares.params)
    if not base.gradient_based or base.kind != "bounded":
        raise BenchError(f"bench audit needs a white-box bounded attack as its base, not '{attack}'; give "
                         f"--attack one of {', '.join(DEFAULT_ATTACK.values())} (or another gradient attack).")
    if norm and base.norm != norm:
        raise BenchError(f"--threat-model {threat_model!r} is {norm}, but attack '{attack}' works in {base.norm}; "
                         f"give an attack of that norm, e.g. --attack {DEFAULT_ATTACK[norm]}.")
    norm = base.norm
    if eps is None:
        eps = float(base.eps)
    base = _with(base, eps=eps)
    n_test = n_test or prof.n_test
    trained = train(defense, dataset, profile, seed, env=env)
    d, model = trained.defense, trained.model
    x, y = load_subset(dataset, "test", env.data_root, n_test, seed)
    counter = PassCounter(model).eval()
    eval_model = d.evaluation_model(counter)
    plan = [v for v in variants(env, base, d, dataset, profile, norm, eps, x[0].numel())
            if not only or v.role == "base" or v.role.split(":")[0] in only]
    batch = attack_batch_size(env, ares, profile)  # the cell's batches, so the base run is the cell's run
    results: dict[str, dict] = {}
    t_all = time.time()
    with exact_fp32():
        torch.manual_seed(seed)
        correct = predict(eval_model, x, env.device, prof.eval_batch_size) == y
        positions = correct.nonzero().squeeze(1)
        n = len(y)
        for v in plan:
            if v.role.startswith("adapted:") and not _needed(v.role, results.get("base", {}).get("checks", {})):
                results[v.label] = {"role": v.role, "skipped": "not needed: the per-cell checks did not fire"}
                continue
            ctx = AttackContext(defense=d, device=env.device, seed=seed, batch_size=prof.eval_batch_size,
                                eval_model=eval_model, dataset=dataset, profile=profile,
                                **harness_services(env, dataset, profile, seed))
            f0, b0, t0 = counter.forward_images, counter.backward_images, time.time()
            if v.atk.kind != "bounded" or (getattr(v.atk.params, "norm", norm) != norm):
                results[v.label] = {"role": v.role, "skipped": f"not a {norm} bounded attack"}
                continue
            try:
                res = attack_points(env, trained, v.atk, counter, eval_model, x, y, positions, batch, ctx,
                                    label=f"audit {v.label} on {defense}")
            except BenchError as e:
                if v.role == "base":
                    raise
                results[v.label] = {"role": v.role, "skipped": str(e)}
                continue
            fooled = torch.zeros(n, dtype=torch.bool)
            if res.fooled:
                fooled[positions] = torch.cat(res.fooled)
            ran_eps = v.atk.eps
            if ran_eps is None or (v.role in ("single_step", "black_box") and (
                    abs(ran_eps - eps) > 1e-9 * max(1, eps) or v.atk.norm != norm)):
                results[v.label] = {"role": v.role, "skipped": f"it ran at {v.atk.norm} eps {ran_eps}, not {norm} "
                                                               f"{eps:.6g}"}
                continue
            if res.norms:  # the same budget check as a cell's (merge_parts)
                worst_norm = float(torch.cat(res.norms).max())
                if worst_norm > ran_eps * (1 + 1e-5) + 1e-6:
                    raise BenchError(f"attack '{v.atk.name}' ({v.label}) exceeded its {norm} budget {ran_eps:.6g} "
                                     f"(max {worst_norm:.6g}): this is a bug in the attack.")
            checks = verdicts.finalize(res.probe, verdict_settings(cfg), attack_traits(v.atk)) if res.probe else {}
            k = int((correct & ~fooled).sum())
            lo, hi = wilson_interval(k, n)
            results[v.label] = {"role": v.role, "attack": v.atk.name, "eps": ran_eps, "eps_factor": v.eps_factor,
                                "robust": k, "n": n,
                                "robust_acc": k / n, "ci": [lo, hi], "checks": checks,
                                "forward_passes": counter.forward_images - f0,
                                "backward_passes": counter.backward_images - b0,
                                "seconds": round(time.time() - t0, 2), "warnings": sorted(set(ctx.warnings)),
                                "_fooled": fooled}
    report = verdicts.audit_checks(results, correct, s)
    report.update(audit_key=audit_key(env, defense, dataset, profile, seed, attack, norm, eps, n_test),
                  defense=defense, dataset=dataset, profile=profile, seed=seed, attack=attack, norm=norm, eps=eps,
                  only=list(only),
                  n=len(y), clean_acc=float(correct.float().mean()), seconds=round(time.time() - t_all, 1),
                  checkpoint=trained.key, git_sha=provenance.git_sha(), versions=provenance.versions(),
                  device=provenance.device_name(env.device), config_hash=content_hash(cfg.path.read_text()))
    for r in results.values():
        r.pop("_fooled", None)
    report["variants"] = results
    return report


def threat_models(env: Env, attacks: list[str], dataset: str, profile: str) -> list[tuple[str, str]]:
    """(base attack, 'norm:eps') per threat model of a matrix's attacks: the first white-box bounded attack of
    each (norm, eps) in matrix order, preferring an iterative PGD-engine one (the effort and budget variants
    need its step; a single step is the audit's own FGSM check, not a base)."""
    found: dict[tuple, list] = {}
    for order, name in enumerate(attacks):
        res = env.cfg.attack(name, dataset, profile)
        atk = res.cls(res.params)
        if atk.gradient_based and atk.kind == "bounded" and atk.eps:
            preference = (not hasattr(atk.params, "settings"), getattr(atk.params, "steps", 2) < 2, order)
            found.setdefault((atk.norm, round(float(atk.eps), 9)), []).append((preference, name, float(atk.eps)))
    return [(min(names)[1], f"{norm}:{min(names)[2]!r}") for (norm, _), names in found.items()]


def audit_matrix(env: Env, defenses: list[str], attacks: list[str], datasets: list[str], profile: str, seed: int,
                 n_test: int | None, force: bool, skip: set[tuple[str, str]] = frozenset()) -> list[dict]:
    """The [profiles.P] audit switch: audit each defense of a matrix once per threat model of its attacks, after
    its cells. A report that is up to date (same checkpoint, bench.toml, attack, threat model, n and seed) is
    kept unless force; (dataset, defense) pairs in skip (their cells failed) are left out."""
    reports = []
    for dataset in datasets:
        for base, tm in threat_models(env, attacks, dataset, profile):
            for defense in defenses:
                if (dataset, defense) in skip:
                    progress.log(f"audit {defense} ({dataset}, {tm}): skipped, its cells did not all finish")
                    continue
                norm, eps = parse_threat_model(tm)
                path = report_path(env.store.root, defense, dataset, profile, norm, eps)
                key = audit_key(env, defense, dataset, profile, seed, base, norm, eps, n_test)
                old = verdicts.read_report(path)
                if old and old.get("audit_key") == key and not force:
                    progress.log(f"audit {defense} ({dataset}, {tm}): up to date in {path}")
                    reports.append(old)
                    continue
                report = audit(env, defense, dataset, profile, seed, attack=base, threat_model=tm, n_test=n_test)
                summary(report)
                progress.log(f"audit report: {write(report, env.store.root)}")
                reports.append(report)
    return reports


def audit_key(env: Env, defense: str, dataset: str, profile: str, seed: int, attack: str, norm: str, eps: float,
              n_test: int | None) -> str:
    """What an audit's outcome depends on: the checkpoint, the whole bench.toml, the base attack, the threat
    model, the test points and the seed."""
    from .runner import checkpoint_key

    ckpt = checkpoint_key(env.cfg.defense(defense, dataset, profile), dataset, seed)
    return content_hash({"checkpoint": ckpt, "config": content_hash(env.cfg.path.read_text()), "attack": attack,
                         "norm": norm, "eps": float(eps), "n": n_test or env.cfg.profiles[profile].n_test,
                         "seed": seed})


def summary(report: dict) -> str:
    part = f", only {'+'.join(report['only'])}" if report.get("only") else ""
    lines = [f"audit of {report['defense']} ({report['dataset']}, {report['profile']}, {report['norm']} eps "
             f"{report['eps']:.6g}, n = {report['n']}, clean {report['clean_acc']:.1%}{part}):"]
    for k, v in report["variants"].items():
        if "skipped" in v:
            lines.append(f"  {k:22s} skipped: {v['skipped']}")
            continue
        marks = [f"{c}: {x['short']}" for c, x in v["checks"].items() if x["verdict"] in ("warn", "fail")]
        lines.append(f"  {k:22s} robust {v['robust_acc']:6.1%}  {v['seconds']:7.1f}s" +
                     (f"  ⚠ {'; '.join(marks)}" if marks else ""))
    for name, c in report["checks"].items():
        lines.append(f"  check {name}: {c['verdict']}: {c['reason']}")
    o, a = report["original"], report["adapted"]
    lines.append(f"  original {o['robust_acc']:.1%} -> adapted {a['robust_acc']:.1%} [{a['ci'][0]:.1%}, {a['ci'][1]:.1%}] "
                 f"(per-point worst case over {len(a['attacks'])} attacks); verdict {report['verdict']}")
    progress.log("\n".join(lines))
    return "\n".join(lines)
