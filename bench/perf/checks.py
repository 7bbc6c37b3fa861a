"""The per-cell verdict checks' share of a cell's attack time (`bench perf-checks`), measured in one run.

One cell's attack (its profile's n, batches and settings, exact fp32) runs with the checks on and off,
after one untimed warm-up run, alternating the order repetition by repetition and keeping medians, so background load on a shared machine hits
both alike. The overhead is (on - off) / off; `probe_share` is the part the model probes take as timed inside
the cell (the rest of the checks ride on the attack's own passes). Both runs must fool exactly the same points:
the checks observe the attack, they never change it."""
from __future__ import annotations

import statistics
import time

import torch

from .. import provenance
from ..attack import AttackContext, PassCounter
from ..data import load_subset
from ..exact import exact_fp32
from ..runner import (Env, attack_batch_size, attack_points, harness_services, predict, train,
                     verdict_settings)


def check_share(env: Env, defense: str, attack: str, dataset: str, profile: str, seed: int,
                n_test: int | None = None, repeats: int = 3) -> dict:
    cfg, prof = env.cfg, env.cfg.profiles[profile]
    ares = cfg.attack(attack, dataset, profile)
    atk = ares.cls(ares.params)
    n_test = n_test or getattr(ares.params, "n_test", 0) or prof.n_test
    trained = train(defense, dataset, profile, seed, env=env)
    x, y = load_subset(dataset, "test", env.data_root, n_test, seed)
    counter = PassCounter(trained.model).eval()
    eval_model = trained.defense.evaluation_model(counter)
    bs = attack_batch_size(env, ares, profile)
    settings = verdict_settings(cfg)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    probe_s, outcomes = [], {}
    try:
        with exact_fp32():
            correct = predict(eval_model, x, env.device, prof.eval_batch_size) == y
            positions = correct.nonzero().squeeze(1)
            # one untimed run first: the first passes of a process pay for allocations and kernel set-up
            order = [(None, True)] + [(rep, on) for rep in range(repeats)
                                      for on in ((True, False) if rep % 2 == 0 else (False, True))]
            for rep, enabled in order:
                cfg.verdicts = settings.model_copy(update={"enabled": enabled})
                ctx = AttackContext(defense=trained.defense, device=env.device, seed=seed, batch_size=bs,
                                    eval_model=eval_model, dataset=dataset, profile=profile,
                                    **harness_services(env, dataset, profile, seed))
                t0 = time.perf_counter()
                res = attack_points(env, trained, atk, counter, eval_model, x, y, positions, bs, ctx,
                                    label=f"{attack} on {defense}, checks {'on' if enabled else 'off'}")
                if rep is None:
                    continue
                seconds[enabled].append(time.perf_counter() - t0)
                if enabled:
                    probe_s.append(res.check_s)
                outcomes.setdefault(enabled, torch.cat(res.fooled) if res.fooled else torch.zeros(0, dtype=torch.bool))
    finally:
        cfg.verdicts = settings
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    return {"defense": defense, "attack": attack, "dataset": dataset, "profile": profile, "seed": seed,
            "n_test": n_test, "attacked": len(positions), "repeats": repeats, "batch_size": bs,
            "seconds_on": round(on, 3), "seconds_off": round(off, 3), "overhead": round((on - off) / off, 4),
            "probe_share": round(statistics.median(probe_s) / off, 4),
            "same_outcome": bool(torch.equal(outcomes[True], outcomes[False])),
            "all_seconds": {"on": seconds[True], "off": seconds[False]}, "checkpoint": trained.key,
            "threads": torch.get_num_threads(), "device": provenance.device_name(env.device),
            "git_sha": provenance.git_sha(), "versions": provenance.versions()}


def format_share(r: dict) -> str:
    return (f"{r['defense']} × {r['attack']} ({r['dataset']}, {r['profile']}, n = {r['n_test']}, {r['attacked']} "
            f"attacked, {r['threads']} thread(s), {r['device']}): attack {r['seconds_off']:.1f} s without the "
            f"checks, {r['seconds_on']:.1f} s with them: overhead {r['overhead']:+.1%} (model probes "
            f"{r['probe_share']:.1%}); same points fooled: {'yes' if r['same_outcome'] else 'NO'}")
