"""Does a dictionary learner reproduce the sparse front end's published dictionary? Compares the atom statistics
(defenses/_dictionary.py: atom_statistics) of the published file with two learners on the same settings (500 atoms,
4x4x3 patches at stride 2, alpha 1.0, lasso-lars codes, 1000 mini-batches of 5 distinct seeded patches):

- bench's learner: today's scikit-learn MiniBatchDictionaryLearning.partial_fit (what `sparse` uses);
- the older online algorithm (Mairal et al. 2009) as scikit-learn's dict_learning_online ran it before its 1.1
  rewrite, written here from that description: atoms initialised from the SVD of all training patches (48
  directions, the other 452 zero), block-coordinate updates on the running statistics A and B, an unused atom
  restarted as a random Gaussian direction.

Run: BENCH_DATA=../shared/data BENCH_WEIGHTS=../shared/authors python results/measured/experiments/dictionary_learners.py
Writes dictionary_learners.json beside this file."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from sklearn.decomposition import sparse_encode  # noqa: E402

from bench import load_split, provenance  # noqa: E402
from defenses import _dictionary as D  # noqa: E402


def patch_gram(images, patch=4, stride=2, chunk=2000) -> np.ndarray:
    """X^T X over every stride-2 patch of every training image ((H, W, C) order, pixels in [0, 1])."""
    n, c, h, w = images.shape
    gram = np.zeros((patch * patch * c,) * 2)
    for i in range(0, n, chunk):
        arr = images[i:i + chunk].numpy().astype(np.float64).transpose(0, 2, 3, 1) / 255.0
        rows = [arr[:, y:y + patch, x:x + patch, :].reshape(len(arr), -1)
                for y in range(0, h - patch + 1, stride) for x in range(0, w - patch + 1, stride)]
        p = np.concatenate(rows)
        gram += p.T @ p
    return gram


def online_legacy(patches, gram, n_atoms=500, alpha=1.0, batch=5, iters=1000, seed=0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    d = patches.shape[1]
    init = np.sqrt(np.maximum(evals[order], 0))[:, None] * evecs[:, order].T  # S * V, as an SVD of the patches
    dictionary = np.r_[init, np.zeros((n_atoms - d, d))].T.copy()  # features x atoms
    a, b = np.zeros((n_atoms, n_atoms)), np.zeros((d, n_atoms))
    for it in range(iters):
        x = patches[it * batch:(it + 1) * batch]
        code = sparse_encode(x, dictionary.T, algorithm="lasso_lars", alpha=alpha).T
        theta = float((it + 1) * batch) if it < batch - 1 else float(batch ** 2 + it + 1 - batch)
        beta = (theta + 1 - batch) / (theta + 1)
        a *= beta
        a += code @ code.T
        b *= beta
        b += x.T @ code.T
        r = b - dictionary @ a
        for k in range(n_atoms):
            r += np.outer(dictionary[:, k], a[k])
            dictionary[:, k] = r @ a[k]
            norm = np.linalg.norm(dictionary[:, k])
            if norm < 1e-10:
                dictionary[:, k] = rng.randn(d)
                dictionary[:, k] /= np.linalg.norm(dictionary[:, k])
            else:
                dictionary[:, k] /= norm
                r -= np.outer(dictionary[:, k], a[k])
    return dictionary.T


def main() -> None:
    data = os.environ.get("BENCH_DATA", str(REPO.parent / "shared" / "data"))
    weights = Path(os.environ.get("BENCH_WEIGHTS", str(REPO.parent / "shared" / "authors")))
    images, _ = load_split("cifar10", "train", data)
    s = D.DictionarySettings(dataset="cifar10")
    out = {"published": D.atom_statistics(np.load(weights / "sparse_coding_frontend-cifar10_dictionary_500x48.npy"))}
    t = time.time()
    atoms, stats = D.learn(images, s)
    out["bench_sklearn_partial_fit"] = {**D.atom_statistics(atoms), "seconds": round(time.time() - t, 1)}
    t = time.time()
    patches = D.sample_patches(images, s.patch_size, s.stride, s.iterations * s.batch_size, s.seed)
    legacy = D.unit_atoms(online_legacy(patches, patch_gram(images)))
    out["online_legacy_svd_init_gaussian_restarts"] = {**D.atom_statistics(legacy), "seconds": round(time.time() - t, 1)}
    out["provenance"] = {"git_sha": provenance.git_sha(), "versions": provenance.versions(), "threads": 1}
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
