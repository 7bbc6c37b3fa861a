"""How minnorm_l2_budget_pgd_at.json was made (run from the repository root):
  BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/experiments/minnorm_l2_budget.py OUT.json SCRATCH_DIR \
      PGD_FROM.json STEPS:INIT_STEPS [STEPS:INIT_STEPS ...]

Can one FMN-L2 run give the L2 curve at <= 0.3x the model passes of the PGD-L2 cells at eps 0.25, 0.5, 1.0 and
stay within +1 point of each cell? On the N seeded CIFAR-10 test points of the zoo's quick checkpoint named in
PGD_FROM (an output of minnorm_early_stop.py, whose PGD cells are taken as measured), `fmn_l2` at the quick profile
with its FMN step count and its DDN start's step count replaced by each STEPS:INIT_STEPS pair (the rest of the
entry, early stop included, as configured), through the harness's own attack path (bench.runner.attack_trained:
fp32 verdicts, pass counting). Per setting: model passes (forward + backward images) and seconds against the PGD
cells' sums, the curve's accuracy at each eps against the cell's, the median minimal norm."""
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from bench import provenance
from bench.runner import Env, attack_trained, train

out_path, scratch, pgd_from = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
settings = [tuple(int(v) for v in pair.split(":")) for pair in sys.argv[4:]]
defense, n, seed, dataset, profile = pgd_from["defense"], pgd_from["n"], pgd_from["seed"], "cifar10", "quick"
pgd = pgd_from["norms"]["l2"]

torch.manual_seed(0)
env = Env.create(device="cpu", results_dir=scratch)
trained = train(defense, dataset, profile, seed, env=env)
assert trained.key == pgd_from["checkpoint"], (trained.key, pgd_from["checkpoint"])

result = {"defense": defense, "dataset": dataset, "profile": profile, "seed": seed, "n": n, "checkpoint": trained.key,
          "pgd_from": os.path.basename(sys.argv[3]), "pgd_passes_summed": pgd["pgd"]["passes_summed"],
          "pgd_seconds_summed": pgd["pgd"]["seconds_summed"], "settings": []}
for steps, init_steps in settings:
    resolved = env.cfg.attack("fmn_l2", dataset, profile)
    params = resolved.params.model_copy(update={"steps": steps, "init_steps": init_steps})
    start = time.perf_counter()
    part = attack_trained(env, trained, SimpleNamespace(cls=resolved.cls, params=params), dataset, profile, seed, n)
    seconds = time.perf_counter() - start
    passes = part["forward_passes"] + part["backward_passes"]
    correct = np.array(part["correct"], bool)
    norms = np.where(correct, np.inf, 0.0)
    index, hit = np.array(part["index"], int), np.array(part["fooled"], bool)
    norms[index[hit]] = np.array(part["norms"], float)[hit]
    per_eps = []
    for cell in pgd["per_eps"]:
        acc = float((norms > cell["eps"]).mean())
        per_eps.append({"eps": cell["eps"], "pgd_acc": cell["pgd_acc"], "fmn_acc": acc,
                        "fmn_minus_pgd_points": round(100 * (acc - cell["pgd_acc"]), 6),
                        "within_1_point": 100 * (acc - cell["pgd_acc"]) <= 1.0 + 1e-9})
    row = {"steps": steps, "init_steps": init_steps, "passes": passes, "seconds": seconds,
           "passes_ratio_over_pgd": passes / pgd["pgd"]["passes_summed"],
           "time_ratio_over_pgd": seconds / pgd["pgd"]["seconds_summed"],
           "fooled": int(hit.sum()), "attacked": len(index), "median_minimal_norm": float(np.median(norms)),
           "info": part["info"], "per_eps": per_eps,
           "within_1_point_everywhere": all(e["within_1_point"] for e in per_eps)}
    result["settings"].append(row)
    print(json.dumps(row), flush=True)

result.update({"git_sha": provenance.git_sha(), "device": provenance.device_name(env.device),
               "torch_threads": torch.get_num_threads(),
               "versions": provenance.versions(), "load_average_1min_at_end": os.getloadavg()[0],
               "cpu_count": os.cpu_count()})
with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
