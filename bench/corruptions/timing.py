"""How long regenerating CIFAR-10-C takes, per corruption: `n` test images at each of the five severities, one process,
timed with the wall clock (so the machine's load counts; say what it was), extrapolated linearly to the 50 000
images of a corruption's released file (10 000 test images x 5 severities).

    python -m bench.corruptions.timing --n 200 --data-root DATA --corruptions-root ROOT --out FILE.json"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from . import TEST_IMAGES, imagemagick_version, library_versions, regenerate
from .spec import CORRUPTIONS, SEVERITIES


def measure(n: int, data_root: Path, root: Path) -> dict:
    from ..data import load_split

    x, _ = load_split("cifar10", "test", str(data_root))
    images = x[:n].permute(0, 2, 3, 1).numpy()
    out = {}
    for name in CORRUPTIONS:
        per = {}
        for s in SEVERITIES:
            t0 = time.perf_counter()
            regenerate(name, s, images, range(n), root)
            per[str(s)] = time.perf_counter() - t0
        total = sum(per.values())
        out[name] = {"seconds_per_severity": {k: round(v, 3) for k, v in per.items()},
                     "ms_per_image": round(1000 * total / (n * len(SEVERITIES)), 3),
                     "extrapolated_seconds_50000_images": round(total / n * TEST_IMAGES, 1)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="test images per severity")
    p.add_argument("--data-root", default=os.environ.get("BENCH_DATA", "data"))
    p.add_argument("--corruptions-root", default=os.environ.get("BENCH_CORRUPTIONS", "corruptions"))
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    load = os.getloadavg()
    t0 = time.perf_counter()
    per = measure(a.n, Path(a.data_root), Path(a.corruptions_root))
    result = {"what": f"regenerating CIFAR-10-C: {a.n} test images x {len(SEVERITIES)} severities per corruption, "
                      f"one process; 50 000-image figures extrapolated linearly from them",
              "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m bench.corruptions.timing "
                         f"--n {a.n}",
              "n_per_severity": a.n, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_average_before": [round(v, 2) for v in load],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "libraries": {**library_versions(), "imagemagick": imagemagick_version()}, "total_seconds": round(time.perf_counter() - t0, 1),
              "extrapolated_seconds_all_19_x_50000": round(sum(v["extrapolated_seconds_50000_images"]
                                                               for v in per.values()), 0),
              "corruptions": per}
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
