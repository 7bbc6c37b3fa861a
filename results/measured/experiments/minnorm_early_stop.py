"""How minnorm_early_stop_*.json were made (run from the repository root):
  BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/experiments/minnorm_early_stop.py OUT.json SCRATCH_DIR \
      [DEFENSE] [N] [NORMS, comma-separated] [PGD_FROM.json]

Per norm, on the same N seeded CIFAR-10 test points of the zoo's quick checkpoint of DEFENSE, through the
harness's own attack path (bench.runner.attack_trained: fp32 verdicts, pass counting):
- the fmn_<norm> entry at the quick profile twice: with per-point early stop switched off (stop_patience = 0:
  every point runs every step, the loop foolbox runs) and with the entry's own early stop; per point, the norm
  each returned (inf where it fooled nothing), how many norms grew and by how much, the medians, and the model
  passes (forward + backward images) of each;
- one PGD cell per eps (the pgd_<norm> entry at the quick profile, eps replaced): its robust accuracy and 95 %
  interval against each FMN curve's accuracy at that eps, and the summed passes and time of the cells.
The cost target is one FMN run at <= 0.3x the PGD cells' summed passes with its curve within +1 point of each cell.
PGD_FROM: an earlier output of this script on the same checkpoint, N and seed, whose PGD cells are taken as they
were measured instead of re-run (they do not depend on FMN's settings); the output names it."""
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
defense = sys.argv[3] if len(sys.argv) > 3 else "pgd_at"
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
norms = sys.argv[5].split(",") if len(sys.argv) > 5 else ["linf", "l2"]
dataset, profile, seed = "cifar10", "quick", 0
pgd_from = json.load(open(sys.argv[6])) if len(sys.argv) > 6 else None
grids = {"linf": [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "l2": [0.25, 0.5, 1.0]}

torch.manual_seed(0)
env = Env.create(device="cpu", results_dir=scratch)
trained = train(defense, dataset, profile, seed, env=env)


def attack(entry, **update):
    """(the entry's quick params with `update`, the harness's answer plus its seconds and model passes)."""
    resolved = env.cfg.attack(entry, dataset, profile)
    params = resolved.params.model_copy(update=update)
    start = time.perf_counter()
    part = attack_trained(env, trained, SimpleNamespace(cls=resolved.cls, params=params), dataset, profile, seed, n)
    part.update(seconds=time.perf_counter() - start, passes=part["forward_passes"] + part["backward_passes"])
    return params, part


def minimal_norms(part):
    """Per point of the n: 0 misclassified clean, the returned norm where fooled, inf where not."""
    correct = np.array(part["correct"], bool)
    out = np.where(correct, np.inf, 0.0)
    index, hit = np.array(part["index"], int), np.array(part["fooled"], bool)
    out[index[hit]] = np.array(part["norms"], float)[hit]
    return out


def fmn_summary(params, part, norms):
    finite = norms[np.isfinite(norms)]
    return {"params": params.model_dump(), "seconds": part["seconds"], "passes": part["passes"],
            "passes_per_attacked_point": part["passes"] / max(1, len(part["index"])), "info": part["info"],
            "fooled": int(np.sum(part["fooled"])), "attacked": len(part["index"]),
            "median_minimal_norm": float(np.median(norms)), "mean_norm_of_fooled": float(finite[finite > 0].mean())}


result = {"defense": defense, "dataset": dataset, "profile": profile, "seed": seed, "n": n, "checkpoint": trained.key,
          "norms": {}, "pgd_from": os.path.basename(sys.argv[6]) if pgd_from else None}
if pgd_from:
    assert (pgd_from["defense"], pgd_from["n"], pgd_from["seed"], pgd_from["checkpoint"]) == (defense, n, seed, trained.key)
for norm in norms:
    full_params, full = attack(f"fmn_{norm}", stop_patience=0)
    early_params, early = attack(f"fmn_{norm}")
    a, b = minimal_norms(full), minimal_norms(early)
    both = np.isfinite(a) & np.isfinite(b) & (a > 0)
    ratio = b[both] / a[both]
    compare = {"points_compared": int(both.sum()),
               "fooled_by_full_only": int((np.isfinite(a) & ~np.isfinite(b)).sum()),
               "fooled_by_early_only": int((~np.isfinite(a) & np.isfinite(b)).sum()),
               "norm_ratio_early_over_full": {"max": float(ratio.max()), "min": float(ratio.min()),
                                              "mean": float(ratio.mean()),
                                              "p95": float(np.quantile(ratio, 0.95))},
               "points_larger_by_more_than": {f"{t:g}": int((ratio > 1 + t).sum()) for t in (1e-4, 1e-3, 1e-2, 5e-2)},
               "median_full": float(np.median(a)), "median_early": float(np.median(b)),
               "passes_full": full["passes"], "passes_early": early["passes"],
               "passes_ratio_early_over_full": early["passes"] / full["passes"]}
    print(norm, json.dumps(compare), flush=True)
    correct = np.array(early["correct"], bool)
    rows, pgd_passes, pgd_seconds = [], 0, 0.0
    earlier = pgd_from["norms"][norm] if pgd_from else None
    for k_eps, eps in enumerate(grids[norm]):
        if earlier is not None:
            row = {key: v for key, v in earlier["per_eps"][k_eps].items() if not key.startswith("fmn_")}
            assert abs(row["eps"] - eps) < 1e-12
            k = round(row["pgd_acc"] * n)
        else:
            pgd_params, pgd = attack(f"pgd_{norm}", eps=eps)
            robust = correct.copy()
            robust[np.array(pgd["index"], int)] &= ~np.array(pgd["fooled"], bool)
            k = int(robust.sum())
            row = {"eps": eps, "eps_255": eps * 255 if norm == "linf" else None, "pgd_acc": k / n,
                   "pgd_ci": list(wilson_interval(k, n)), "pgd_passes": pgd["passes"], "pgd_seconds": pgd["seconds"]}
        pgd_passes += row["pgd_passes"]
        pgd_seconds += row["pgd_seconds"]
        for name, curve in (("fmn_full", a), ("fmn_early", b)):
            acc = float((curve > eps).mean())
            row[f"{name}_acc"] = acc
            row[f"{name}_minus_pgd_points"] = 100 * (acc - k / n)
            row[f"{name}_within_1_point"] = 100 * (acc - k / n) <= 1.0 + 1e-9
        rows.append(row)
        print(json.dumps(row), flush=True)
    pgd_summary = ({**earlier["pgd"], "measured_by": "an earlier run of this script (PGD_FROM)"} if earlier is not None
                   else {"params": pgd_params.model_dump(exclude={"eps"})})
    result["norms"][norm] = {
        "fmn_full": fmn_summary(full_params, full, a), "fmn_early": fmn_summary(early_params, early, b),
        "early_vs_full": compare,
        "pgd": {**pgd_summary, "passes_summed": pgd_passes, "seconds_summed": pgd_seconds},
        "passes_ratio_fmn_full_over_pgd": full["passes"] / pgd_passes,
        "passes_ratio_fmn_early_over_pgd": early["passes"] / pgd_passes,
        "time_ratio_fmn_early_over_pgd": early["seconds"] / pgd_seconds,
        "per_eps": rows, "clean_acc": float(correct.mean())}
    print(json.dumps({k: v for k, v in result["norms"][norm].items() if k != "per_eps"}, indent=1), flush=True)

result.update({"device": provenance.device_name(env.device), "torch_threads": torch.get_num_threads(),
               "versions": provenance.versions(), "load_average_1min_at_end": os.getloadavg()[0],
               "cpu_count": os.cpu_count()})
with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
