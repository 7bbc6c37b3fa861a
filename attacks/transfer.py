"""Transfer attacks: adversarial examples made by a white-box PGD-engine attack on a surrogate defense, then
evaluated on the target (black-box transfer from PGD-AT, 001 §4.2.4; PW-T through the sparse front end's
unsupervised autoencoder, SPEC §1 and §6).

The surrogate is a bench.toml defense entry trained (or loaded) on the same dataset, profile and seed. Examples
are the highest-surrogate-loss iterate over all steps and restarts, not the first one that crosses the
surrogate's boundary: an example that barely fools the surrogate transfers poorly, which would overstate the
target's robustness. They are cached per image (content hash of image and label) under the surrogate checkpoint
and the attack config, so one surrogate run serves every target whatever subset of points it attacks."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import ClassVar, Literal

import torch

from bench import (Attack, AttackOutput, AttackParams, ConfigError, Defense, Field, Number, PassCounter,
                   content_hash, register_attack, run_pgd)

from ._whitebox import attacked_model, gradient_warnings
from .pgd import PGDParams

_KIND = "adversarial"
_SHARDS: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}  # in-process memo of loaded cache shards


class TransferParams(AttackParams):
    surrogate: str = Field("pgd_at", description="defense entry whose trained model the examples are made on")
    surrogate_attack: str = Field("pgd_transfer", description="PGD-engine attack entry run on the surrogate "
                                                              "(its norm and eps are this attack's unless set below)")
    norm: Literal["linf", "l2", "l1"] | None = Field(None, description="run the surrogate attack in this norm "
                                                                       "instead of its own (unset = its own)")
    eps: Number | None = Field(None, ge=0, description="run the surrogate attack at this budget instead of its own, "
                                                       "its step the same fraction of eps (unset = its own)")

    # added after transfer results existed: out of the serialized params while unset (StrictModel), so the keys of
    # every earlier transfer cell stay valid
    omit_at_default: ClassVar[dict] = {"norm": None, "eps": None}


@register_attack("transfer")
class Transfer(Attack):
    """Black-box transfer: a white-box attack on a surrogate defense (default PGD-AT), evaluated on the target."""

    Params = TransferParams

    def __init__(self, params):
        super().__init__(params)
        self._inner = None  # the resolved surrogate attack entry, known once bound (bind, or run with a context)
        self._surrogates: dict = {}  # (dataset, profile, seed) -> TrainedDefense, loaded once per cell, not per batch

    @property
    def norm(self) -> str:
        return self._inner.params.norm if self._inner is not None else ""

    @property
    def eps(self) -> float | None:
        return self._inner.params.eps if self._inner is not None else None

    def bind(self, attack_entry):
        """The surrogate-side entry (at this attack's norm and eps overrides) decides the threat model."""
        p = self.params
        inner = attack_entry(p.surrogate_attack)
        if not isinstance(inner.params, PGDParams):
            raise ConfigError(f"attack '{self.name}': surrogate_attack = '{p.surrogate_attack}' uses plug-in "
                              f"'{inner.plugin}', which does not run on the PGD engine. Allowed: an entry whose "
                              f"plug-in is pgd_linf, pgd_l2, pgd_l1, cw_linf, pgd_eot, fgsm or bim.")
        self._inner = rebudgeted(inner, p.norm, p.eps)
        return self

    def run(self, model, x, y, ctx):
        p = self.params
        inner = self.bind(ctx.attack_entry)._inner
        where = (ctx.dataset, ctx.profile, ctx.seed)
        if where not in self._surrogates:
            self._surrogates[where] = ctx.trained_defense(p.surrogate)
        sur = self._surrogates[where]
        if isinstance(ctx.defense, Defense) and p.surrogate == ctx.defense.context.entry_name:
            ctx.warnings.append(f"{self.name}: the surrogate '{p.surrogate}' is the target itself (a white-box attack)")
        group = content_hash({"surrogate": p.surrogate, "checkpoint": sur.key, "attack": inner.as_dict(),
                              "dataset": ctx.dataset, "seed": ctx.seed})
        ids = sample_ids(x, y)
        cache = ctx.artifact_cache()
        known = _cached(cache, group)
        missing = [i for i, s in enumerate(ids) if s not in known]
        info = ctx.info
        if not info:
            info.update(surrogate=p.surrogate, surrogate_checkpoint=sur.key, surrogate_flags=sur.meta.get("flags", {}),
                        surrogate_attack=inner.as_dict(), cache_group=group, generated=0, reused=0,
                        surrogate_fooled=0, surrogate_forward_passes=0, surrogate_backward_passes=0)
        if missing:
            rows = torch.tensor(missing, device=x.device)
            adv, sfooled, counter = _generate(sur, inner, x[rows], y[rows], ctx, self.name)
            shard = [ids[i] for i in missing]
            cache.save(_KIND, f"{group}-{content_hash(shard)}",
                       {"ids": shard, "x_adv": adv.cpu(), "surrogate_fooled": sfooled.cpu()},
                       {"what": "transfer adversarial examples", "surrogate": p.surrogate,
                        "surrogate_checkpoint": sur.key, "attack": inner.as_dict(), "dataset": ctx.dataset,
                        "seed": ctx.seed, "n": len(shard)})
            for s, a, f in zip(shard, adv.cpu(), sfooled.cpu()):
                known[s] = (a, f)
            info["surrogate_forward_passes"] += counter.forward_images
            info["surrogate_backward_passes"] += counter.backward_images
        info["generated"] += len(missing)
        info["reused"] += len(ids) - len(missing)
        info["surrogate_fooled"] += int(sum(bool(known[s][1]) for s in ids))
        x_adv = torch.stack([known[s][0] for s in ids]).to(x.device, x.dtype)
        fooled = torch.tensor([bool(known[s][1]) for s in ids], device=x.device)
        return AttackOutput(x_adv=x_adv, fooled=fooled)  # fooled: the surrogate's verdict; the harness judges the target


@register_attack("pwt")
class PseudoWhiteBoxTransfer(Transfer):
    """PW-T: PGD-EOT on the sparse front end's unsupervised autoencoder + classifier (identity backward), evaluated on the target."""

    class Params(TransferParams):
        surrogate: str = Field("sparse_ae", description="the unsupervised-autoencoder defense entry (SPEC §1)")
        surrogate_attack: str = Field("pgd_eot_pwt", description="PGD-EOT entry with backward = 'frontend_identity'")


def rebudgeted(entry, norm: str | None, eps: float | None):
    """The resolved PGD-engine entry at another norm and/or eps, its step the same fraction of eps as before (an
    absolute step tuned for 8/255 would be far too long at 2/255 and far too short at an L2 budget of 0.5)."""
    p = entry.params
    if (norm is None or norm == p.norm) and (eps is None or eps == p.eps):
        return entry
    new_eps = p.eps if eps is None else float(eps)
    step = p.settings().step_size * new_eps / p.eps if p.eps > 0 else "2.5*eps/steps"  # no old eps to scale from
    params = type(p).model_validate({**p.model_dump(), "norm": norm or p.norm, "eps": new_eps, "step_size": step})
    return dataclasses.replace(entry, params=params)


def sample_ids(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """One content hash per (image, label): the cache key of its transfer example."""
    xs = x.detach().float().cpu().contiguous()
    ys = y.detach().cpu().tolist()
    return [hashlib.sha256(xs[i].numpy().tobytes() + str(ys[i]).encode()).hexdigest()[:24] for i in range(len(xs))]


def _cached(cache, group: str) -> dict:
    """id -> (x_adv, fooled the surrogate) from every cached shard of this surrogate + attack config."""
    out = {}
    for path in sorted((cache.root / _KIND).glob(f"{group}-*.pt")):
        key = str(path)
        if key not in _SHARDS:
            payload, _ = cache.load(_KIND, path.stem)
            _SHARDS[key] = (payload["ids"], payload["x_adv"], payload["surrogate_fooled"])
        ids, adv, sfooled = _SHARDS[key]
        out.update({s: (a, f) for s, a, f in zip(ids, adv, sfooled)})
    return out


def _never_fooled(x_adv, y):
    return torch.zeros(len(y), dtype=torch.bool, device=y.device)


def _generate(sur, inner, x, y, ctx, name):
    params = inner.params
    counter = PassCounter(sur.model).eval()
    sub = ctx.on(sur.defense, sur.defense.evaluation_model(counter))
    gradient_warnings(sub, params.backward, params.eot_samples)
    ctx.warnings.extend(f"{name}, on its surrogate: {w}" for w in sub.warnings)
    # judge = never fooled: the engine then keeps each point's highest-loss iterate over every step and restart
    with attacked_model(sub, counter, params.backward) as m:
        adv, _ = run_pgd(m, x, y, params.settings(), sub.generator(salt=5), judge=_never_fooled)
    with torch.no_grad():
        sfooled = sub.eval_model(adv).argmax(1) != y
    return adv.detach(), sfooled, counter
