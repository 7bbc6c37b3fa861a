"""Measures the shattered-gradients probe (bench.verdicts.Probe.step_probe) on the planted defenses of
tests/planted/masking.py (wrapping the smoke natural CIFAR-10 network) and on honest models (the smoke natural
network, the zoo's quick natural, PGD-AT and other CIFAR-10 defenses), for the probe's points and several step
sizes, and writes what it found as JSON: the evidence behind [verdicts] shattered_* in bench.toml.

    python tests/planted/measure_shattered.py RESULTS_DIR OUT.json [--bpda-only]

RESULTS_DIR is a scratch folder (the smoke natural model is trained there once, ~2 min on 2 cores)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import planted.masking  # noqa: E402,F401  (registers the planted defenses)
from bench import provenance  # noqa: E402
from bench.data import load_subset  # noqa: E402
from bench.exact import exact_fp32  # noqa: E402
from bench.runner import Env, attack_traits, predict, train  # noqa: E402
from bench.verdicts import Probe, finalize  # noqa: E402

PLANTED = ("planted_round", "planted_saturated", "planted_noise", "planted_probs", "planted_misleading_backward",
           "planted_wiggle", "planted_scrambled_backward", "planted_lastbit_noise")
QUICK = ("natural", "pgd_at", "trades", "rfgsm", "hah", "sparse", "sparse_dropout", "vgg16")
ATTACKS = ("pgd_linf", "cw_linf", "pgd_l2")
STEPS = (0.01, 0.125, 0.25, 0.5)
# real defenses through the backward surrogates their BPDA attack entries use (zoo checkpoints, quick profile)
BPDA = (("sparse", "pgd_linf_bpda"), ("sparse", "cw_linf_bpda"), ("sparse", "pgd_l2_bpda"),
        ("sparse_dropout", "pgd_eot_bpda"))


def measure(env, defense, profile, attack, n=64, seed=0):
    cfg = env.cfg
    trained = train(defense, "cifar10", profile, seed, env=env)
    model = trained.model.eval()
    res = cfg.attack(attack, "cifar10", profile)
    atk = res.cls(res.params)
    x, y = load_subset("cifar10", "test", env.data_root, 4 * n, seed)
    with exact_fp32():
        keep = predict(model, x, "cpu", 256) == y
        x, y = x[keep][:n], y[keep][:n]
        out = {}
        for step in STEPS:
            s = cfg.verdicts.model_copy(update={"shattered_step": step})
            p = Probe()
            t0 = time.perf_counter()
            first = p.gradient_probe(model, x, y, atk, trained.defense, s)
            p.model_probe(model, x, s, first)
            checks = finalize(p.state, s, attack_traits(atk))
            out[str(step)] = {"useless": p.state.get("grad_useless"), "probe_s": round(time.perf_counter() - t0, 3),
                              "verdicts": {k: c["verdict"] for k, c in checks.items() if c["verdict"] != "pass"}}
    return {"defense": defense, "profile": profile, "attack": attack, "n": len(y), "by_step": out}


def main(root: str, out_path: str, bpda_only: bool = False) -> None:
    root = Path(root)
    repo = Path(__file__).resolve().parents[2]
    data = Path(__import__("os").environ["BENCH_DATA"])
    env = Env.create(config=repo / "bench.toml", data_root=data, device="cpu", results_dir=root)
    weights = root / "natural_smoke.pt"
    torch.save(train("natural", "cifar10", "smoke", 0, env=env).model.state_dict(), weights)
    text = (repo / "bench.toml").read_text()
    for name in PLANTED:
        text += f'\n[defenses.{name}]\nweights = "{weights}"\nepochs = 0\n'
    (root / "planted.toml").write_text(text)
    penv = Env.create(config=root / "planted.toml", data_root=data, device="cpu", results_dir=root)
    rows = []
    for attack in ATTACKS if not bpda_only else ():
        for defense in ("natural",) + PLANTED:
            rows.append(measure(penv, defense, "smoke", attack))
            print(json.dumps(rows[-1]), flush=True)
        for defense in QUICK:
            rows.append(measure(env, defense, "quick", attack))
            print(json.dumps(rows[-1]), flush=True)
    for defense, attack in BPDA:
        rows.append(measure(env, defense, "quick", attack))
        print(json.dumps(rows[-1]), flush=True)
    head = {
        "what": "fraction of probe points whose gradient step raised the attack's loss no more than a random step of "
                "the same norm (bench.verdicts.Probe.step_probe), per step size (fraction of eps)",
        "command": "python tests/planted/measure_shattered.py SCRATCH results/measured/shattered_gradients.json",
        "seed": 0, "dataset": "cifar10", "device": "cpu", "threads": torch.get_num_threads(),
        "git_sha": provenance.git_sha()}
    # one row per line: the file stays readable in a diff
    lines = ",\n".join("  " + json.dumps(r) for r in rows)
    Path(out_path).write_text(json.dumps(head, indent=1)[:-2] + ',\n "rows": [\n' + lines + "\n ]\n}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--bpda-only" in sys.argv[3:])
