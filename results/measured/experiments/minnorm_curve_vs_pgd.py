"""How minnorm_curve_vs_pgd_*.json were made (run from the repository root):
  BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/experiments/minnorm_curve_vs_pgd.py OUT.json SCRATCH_DIR \
      [DEFENSE] [N] [NORM] [FMN_STEPS]

One FMN run (the fmn_linf / fmn_l2 entry at the quick profile) gives every point's minimal norm, hence accuracy at
every eps; it is compared with one PGD cell per eps (the pgd_linf / pgd_l2 entry at the quick profile, eps
replaced), on the same N seeded test points of the zoo's quick checkpoint, through the harness's own attack path
(bench.runner.attack_trained: fp32 verdicts, pass counting). Reported per eps: PGD accuracy and its 95 % interval,
the FMN curve's accuracy, the difference in points, and the summed attack time and model passes."""
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from bench import provenance
from bench.runner import Env, attack_trained, train
from bench.stats import wilson_interval

out_path, scratch = sys.argv[1], sys.argv[2]
defense = sys.argv[3] if len(sys.argv) > 3 else "natural"
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
norm = sys.argv[5] if len(sys.argv) > 5 else "linf"
fmn_steps = {"steps": int(sys.argv[6])} if len(sys.argv) > 6 else {}  # default: the entry's quick steps
dataset, profile, seed = "cifar10", "quick", 0
grid = {"linf": [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "l2": [0.25, 0.5, 1.0]}[norm]

torch.manual_seed(0)
env = Env.create(device="cpu", results_dir=scratch)
trained = train(defense, dataset, profile, seed, env=env)


def attack(entry, **update):
    ares = env.cfg.attack(entry, dataset, profile)
    ares = SimpleNamespace(cls=ares.cls, params=ares.params.model_copy(update=update))
    t0 = time.perf_counter()
    part = attack_trained(env, trained, ares, dataset, profile, seed, n)
    part["seconds"] = time.perf_counter() - t0
    return ares.params, part


fmn_params, fmn = attack(f"fmn_{norm}", **fmn_steps)
correct = np.array(fmn["correct"], bool)
minimal = np.where(correct, np.inf, 0.0)
index = np.array(fmn["index"], int)
hit = np.array(fmn["fooled"], bool)
minimal[index[hit]] = np.array(fmn["norms"], float)[hit]

rows, pgd_seconds, pgd_passes = [], 0.0, 0
for eps in grid:
    pgd_params, pgd = attack(f"pgd_{norm}", eps=eps)
    robust = correct.copy()
    robust[np.array(pgd["index"], int)] &= ~np.array(pgd["fooled"], bool)
    k = int(robust.sum())
    lo, hi = wilson_interval(k, n)
    curve = float((minimal > eps).mean())
    pgd_seconds += pgd["seconds"]
    pgd_passes += pgd["forward_passes"] + pgd["backward_passes"]
    rows.append({"eps": eps, "eps_255": eps * 255 if norm == "linf" else None, "pgd_acc": k / n, "pgd_ci": [lo, hi],
                 "fmn_curve_acc": curve, "fmn_minus_pgd_points": 100 * (curve - k / n),
                 "fmn_within_1_point": 100 * (curve - k / n) <= 1.0 + 1e-9, "pgd_seconds": pgd["seconds"],
                 "pgd_passes": pgd["forward_passes"] + pgd["backward_passes"]})
    print(json.dumps(rows[-1]), flush=True)

out = {"defense": defense, "dataset": dataset, "profile": profile, "seed": seed, "n": n, "norm": norm,
       "clean_acc": float(correct.mean()), "checkpoint": trained.key,
       "fmn": {"params": fmn_params.model_dump(), "seconds": fmn["seconds"],
               "passes": fmn["forward_passes"] + fmn["backward_passes"],
               "median_minimal_norm": float(np.median(minimal)), "fooled": int(hit.sum()), "attacked": int(len(index))},
       "pgd": {"params": pgd_params.model_dump(exclude={"eps"}), "seconds_summed": pgd_seconds,
               "passes_summed": pgd_passes},
       "time_ratio_fmn_over_pgd": fmn["seconds"] / pgd_seconds, "passes_ratio_fmn_over_pgd": (fmn["forward_passes"] + fmn["backward_passes"]) / pgd_passes,
       "per_eps": rows, "device": provenance.device_name(env.device), "torch_threads": torch.get_num_threads(),
       "versions": provenance.versions(), "load_average_1min_at_end": os.getloadavg()[0],
       "cpu_count": os.cpu_count()}
print(json.dumps({k: v for k, v in out.items() if k != "per_eps"}, indent=1))
json.dump(out, open(out_path, "w"), indent=1)
