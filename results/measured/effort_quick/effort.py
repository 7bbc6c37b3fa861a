# How results/measured/effort_quick/*.json were made, kept as provenance, not a bench command:
#   BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/effort_quick/effort.py DEFENSE DATASET ATTACK OUT.json RESULTS_DIR [N]
# (quick profile, seed 0, N test points, default the profile n_test = 1000; the checkpoint comes from the zoo).
# `bench audit --only effort` now does this with bench itself (it also runs 5x restarts).
"""bench audit restricted to two variants: the base attack and 5x its steps (same absolute step), on the same
points, n = the profile's n_test; writes the audit report (effort check = exact one-sided McNemar)."""
import json, sys
import bench.audit as A
from bench.runner import Env

defense, dataset, attack, out = sys.argv[1:5]
orig = A.variants
def two(*a, **k):
    return [v for v in orig(*a, **k) if v.label in ("base",) or v.label.startswith("steps x")]
A.variants = two
env = Env.create(results_dir=sys.argv[5])
rep = A.audit(env, defense, dataset, "quick", 0, attack=attack, n_test=int(sys.argv[6]) if len(sys.argv) > 6 else None)
json.dump(rep, open(out, "w"), indent=1, default=str)
print(A.summary(rep))
