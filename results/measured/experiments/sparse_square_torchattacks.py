"""How sparse_square_torchattacks.json was made (run from the repository root:
  BENCH_DATA=... OMP_NUM_THREADS=1 python results/measured/experiments/sparse_square_torchattacks.py OUT.json SCRATCH_DIR).

Cross-check bench's Square cell on quick sparse CIFAR-10 with torchattacks' own Square implementation (another
code base): the same zoo checkpoint, the first 40 test points of the seeded n = 200 subset that the model classifies
correctly, Linf 8/255, 1000 queries; robust fraction, evaluated here in eval mode, and the max Linf distance."""
import json, sys, time
import torch, torchattacks
from bench.runner import Env, train
from bench.data import load_subset

torch.manual_seed(0)
env = Env.create(device="cpu", results_dir=sys.argv[2])
t = train("sparse", "cifar10", "quick", 0, env=env)
model = t.model.eval()
x, y = load_subset("cifar10", "test", env.data_root, 200, 0)
with torch.no_grad():
    ok = model(x).argmax(1) == y
x, y = x[ok][:40], y[ok][:40]
atk = torchattacks.Square(model, norm="Linf", eps=8 / 255, n_queries=1000, n_restarts=1, seed=0, verbose=False)
t0 = time.perf_counter()
adv = atk(x, y)
with torch.no_grad():
    robust = (model(adv).argmax(1) == y).float().mean().item()
out = {"n": len(y), "robust_acc": robust, "max_linf": (adv - x).abs().max().item(), "in_box": bool(((adv >= 0) & (adv <= 1)).all()),
       "seconds": time.perf_counter() - t0, "torchattacks": torchattacks.__version__, "n_queries": 1000}
print(json.dumps(out))
json.dump(out, open(sys.argv[1], "w"), indent=1)
