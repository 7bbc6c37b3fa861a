"""Speed and agreement of the STL's batched torch CBPDN solver (defenses/_stl.py) against sporco's ConvBPDN, the
reference CSC library the authors' code uses, on CIFAR-10 test images with the authors' λ = 0.2 dictionary:

    python examples/stl_solver_benchmark.py results/measured/stl_solver_speed.json [n_sporco] [n_torch]

sporco runs as the authors ran it (one image at a time, MaxMainIter 200, RelStopTol 5e-3, AuxVarObj False, float64);
the torch solver runs whole batches at a fixed iteration count (float32). Both codes are scored by the same
objective ½‖Dz − s_high‖² + λ‖z‖₁ on the images both solved. The two are timed alternately in one process, so
both see the same machine load; the record says the threads used and the load average."""
from __future__ import annotations

import json
from importlib import metadata
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import atomic_write_bytes, load_split, locate_file, resolve_data_root, versions

CARD = "results/zoo/external/stl_dictionary_lm0.2_authors.json"
LMBDA = 0.2


def sporco_code(d: np.ndarray, high: torch.Tensor) -> torch.Tensor:
    from sporco.admm import cbpdn

    opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": 200, "RelStopTol": 5e-3, "AuxVarObj": False})
    x = cbpdn.ConvBPDN(d, high.permute(1, 2, 0).double().numpy(), LMBDA, opt, dimK=0).solve()
    return torch.from_numpy(x.squeeze((2, 3))).permute(2, 0, 1)[None].float()


def main(out: str, n_sporco: int = 4, n_torch: int = 64) -> None:
    from defenses._stl import ConvBPDN, load_dictionary, tikhonov_split

    repo = Path(__file__).resolve().parent.parent
    path = locate_file(CARD, repo)
    d = np.load(path).astype(np.float64)
    atoms = load_dictionary(path)
    x, _ = load_split("cifar10", "test", str(resolve_data_root()))
    images = x[:max(n_sporco, n_torch)].float() / 255
    _, high = tikhonov_split(images, 5.0, 16)
    load_before = os.getloadavg()
    record = {"what": "STL convolutional BPDN on CIFAR-10 test images (the first n), authors' lambda = 0.2 dictionary",
              "threads": torch.get_num_threads(), "command": f"python examples/stl_solver_benchmark.py {out} "
                                                            f"{n_sporco} {n_torch}", "torch": {}, "sporco": {}}
    t = time.time()
    ref = [sporco_code(d, high[i]) for i in range(n_sporco)]
    sp_s = (time.time() - t) / n_sporco
    scorer = ConvBPDN(atoms, 32, 32, LMBDA)
    ref_obj = torch.cat([scorer.objective(z, high[i:i + 1]) for i, z in enumerate(ref)])
    record["sporco"] = {"n": n_sporco, "seconds_per_image": round(sp_s, 3), "objective_mean": ref_obj.mean().item()}
    for iterations in (30, 50, 100):
        for batch in (16, 64):
            solver = ConvBPDN(atoms, 32, 32, LMBDA, iterations)
            t = time.time()
            codes = torch.cat([solver(high[i:i + batch]) for i in range(0, n_torch, batch)])
            s = (time.time() - t) / n_torch
            obj = solver.objective(codes[:n_sporco], high[:n_sporco])
            record["torch"][f"iterations={iterations} batch={batch}"] = {
                "n": n_torch, "seconds_per_image": round(s, 4), "speedup_vs_sporco": round(sp_s / s, 1),
                "objective_vs_sporco_max_rel": round(((obj - ref_obj) / ref_obj).max().item(), 5),
                "density": round((codes != 0).float().mean().item(), 5)}
    record.update(load_average_before=load_before, load_average_after=os.getloadavg(), device="cpu",
                  machine=platform.machine(), versions={**versions(), "sporco": metadata.version("sporco")})
    atomic_write_bytes(Path(out), (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "stl_solver_speed.json",
         *(int(a) for a in sys.argv[2:4]))
