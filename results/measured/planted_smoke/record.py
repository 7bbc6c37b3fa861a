# How results/measured/planted_smoke/planted_smoke.json was made, kept as provenance (what it shows: each
# planted defense flagged by the right check on its pgd_linf smoke cell, the honest model by none, and bench audit's
# adapted number near the truth). The same set-up as tests/test_verdicts.py, which asserts the bounds; this writes
# the numbers themselves. Run from the repository root:
#   BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/planted_smoke/record.py SCRATCH_DIR
"""Planted defenses of tests/planted/masking.py (the natural smoke ResNet-32's weights behind a trick that declares
nothing): their cells' verdicts, and `bench audit` (n = 100, the test's cheaper audit: black box = transfer_natural,
effort x3) beside the truth, the natural network's own CW-PGD examples (20 steps of eps/8) evaluated through the
trick, an upper bound on the true robust accuracy."""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # as pytest does: planted.* registers them
import planted.masking  # noqa: F401,E402
from bench import provenance  # noqa: E402
from bench.audit import audit  # noqa: E402
from bench.runner import Env, run_cell, train  # noqa: E402
from test_verdicts import _truth  # noqa: E402  (the test's own measurement of the truth, not a copy)

PLANTED = ("planted_round", "planted_saturated", "planted_noise", "planted_probs", "planted_misleading_backward")
root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
base = Env.create(config=Path("bench.toml"), device="cpu", results_dir=root / "base")
natural = train("natural", "cifar10", "smoke", 0, env=base)
weights = root / "natural.pt"
torch.save(natural.model.state_dict(), weights)
text = Path("bench.toml").read_text()  # the planted_env fixture's config, written out
text = text.replace('black_box = ["transfer_natural", "square"]', 'black_box = ["transfer_natural"]')
text = text.replace("effort_factor = 5 ", "effort_factor = 3 ")
text += "".join(f'\n[defenses.{name}]\nweights = "{weights}"\nepochs = 0\n' for name in PLANTED)
(root / "bench.toml").write_text(text)
(root / "planted").mkdir()
(root / "planted" / "cache").symlink_to(base.cache.root, target_is_directory=True)  # natural: the audit's surrogate
env = Env.create(config=root / "bench.toml", device="cpu", results_dir=root / "planted")


out = {"what": __doc__, "profile": "smoke", "dataset": "cifar10", "seed": 0, "git_sha": provenance.git_sha(),
       "device": provenance.device_name(torch.device("cpu")), "versions": provenance.versions(), "cells": {}, "audits": {}}
for defense in ("natural",) + PLANTED:
    for attack in ("pgd_linf", "cw_linf"):
        row = run_cell(env, defense, attack, "cifar10", "smoke", 0)
        checks = json.loads(row["checks"])
        out["cells"][f"{defense} x {attack}"] = {
            "n": int(row["n"]), "clean_acc": float(row["clean_acc"]), "robust_acc": float(row["robust_acc"]),
            "flags": {k: f"{c['verdict']}: {c['short']}" for k, c in checks.items() if c["verdict"] in ("warn", "fail")}}
for defense in ("natural",) + PLANTED[:3] + PLANTED[4:]:
    t0 = time.perf_counter()
    rep = audit(env, defense, "cifar10", "smoke", 0, n_test=100)
    out["audits"][defense] = {
        "n": 100, "verdict": rep["verdict"], "original": rep["original"]["robust_acc"],
        "adapted": rep["adapted"]["robust_acc"], "adapted_by": rep["adapted"].get("attacks"),
        "truth_at_most": _truth(env, natural, defense, 100), "seconds": round(time.perf_counter() - t0, 1),
        "failed_checks": sorted(k for k, c in rep["checks"].items() if c["verdict"] == "fail")}
    print(defense, out["audits"][defense], flush=True)
(Path(__file__).parent / "planted_smoke.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
print(json.dumps(out["cells"], indent=1))
