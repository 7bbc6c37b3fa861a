"""Patch dictionary of the sparse-coding front end (000 §3.1, SPEC §1): learned once per setting with
scikit-learn's MiniBatchDictionaryLearning and kept as a content-addressed artifact (kind "dictionary").

The authors called `fit(all_patches)` of an old scikit-learn with `n_iter=1000, batch_size=5`: one shuffle of all
stride-2 patches of the 50k training images, then 1000 mini-batches of 5, i.e. 5000 distinct patches drive the fit.
Today's scikit-learn has no `n_iter`; the equivalent used here draws `iterations * batch_size` distinct patches
uniformly (seeded, without replacement) from all patches of all training images and calls `partial_fit` once per
mini-batch. Today's update projects atoms onto the unit ball (||d||_2 <= 1) where the paper's constraint is
||d||_2 = 1, so the atoms are renormalised afterwards (the pre-normalisation norms are recorded).

The result is not the authors' dictionary: today's learner restarts an unused atom from a data patch, so 94 % of
its atoms are single-signed against 51 % in the published file (atom_statistics; the measurements are in
results/measured/experiments/dictionary_learners.json). A published dictionary is read with `from_file` instead
(the sparse entries' `dictionary` option; the paper profile does)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench import ArtifactCache, BenchError, content_hash, load_split, progress, resolve_data_root, versions

FORMAT = 1  # bump when a change here invalidates cached dictionaries


@dataclass(frozen=True)
class DictionarySettings:
    dataset: str
    n_atoms: int = 500
    patch_size: int = 4
    stride: int = 2
    alpha: float = 1.0
    batch_size: int = 5
    iterations: int = 1000
    learner: str = "sklearn"
    seed: int = 0

    @property
    def key(self) -> str:
        return content_hash({"kind": "dictionary", **asdict(self), "format": FORMAT})


def sample_patches(images: torch.Tensor, patch: int, stride: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct patches (seeded, uniform over every stride-`stride` patch of every image) as float64 rows
    flattened in (H, W, C) order, pixels in [0, 1]. `images` is uint8 N×C×H×W."""
    count, _, h, w = images.shape
    rows, cols = (h - patch) // stride + 1, (w - patch) // stride + 1
    total = count * rows * cols
    if n > total:
        raise BenchError(f"the dictionary needs {n} patches but the images hold only {total}; "
                         f"lower dict_iterations or dict_batch_size.")
    pick = np.random.default_rng(seed).choice(total, size=n, replace=False)
    img, rest = np.divmod(pick, rows * cols)
    r, c = np.divmod(rest, cols)
    offsets = np.arange(patch)
    ys = (r * stride)[:, None] + offsets  # n × patch
    xs = (c * stride)[:, None] + offsets
    arr = images.numpy()
    # n × C × patch × patch, then (H, W, C) order as the authors flattened their NHWC patches
    cut = arr[img[:, None, None, None], np.arange(arr.shape[1])[None, :, None, None],
              ys[:, None, :, None], xs[:, None, None, :]]
    return cut.transpose(0, 2, 3, 1).reshape(n, -1).astype(np.float64) / 255.0


def learn_sklearn(patches: np.ndarray, s: DictionarySettings) -> np.ndarray:
    """Atoms as rows (n_atoms × patch dim), as scikit-learn leaves them (norms <= 1)."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    learner = MiniBatchDictionaryLearning(n_components=s.n_atoms, alpha=s.alpha, fit_algorithm="lars",
                                          transform_algorithm="lasso_lars", batch_size=s.batch_size,
                                          random_state=s.seed)
    for k in range(s.iterations):
        learner.partial_fit(patches[k * s.batch_size:(k + 1) * s.batch_size])
    return learner.components_


LEARNERS = {"sklearn": learn_sklearn}


def unit_atoms(atoms: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(atoms, axis=1, keepdims=True)
    if (norms < 1e-8).any():
        raise BenchError(f"dictionary learning left {(norms < 1e-8).sum()} atoms at zero; "
                         f"raise dict_iterations (every atom must be trained or resampled at least once).")
    return atoms / norms


def coding_quality(atoms: np.ndarray, patches: np.ndarray, alpha: float) -> dict:
    """Lasso codes of held-out patches: relative reconstruction error and mean non-zeros per patch (the numbers
    by which two learners are compared)."""
    from sklearn.decomposition import sparse_encode

    code = sparse_encode(patches, atoms, algorithm="lasso_lars", alpha=alpha)
    err = ((patches - code @ atoms) ** 2).sum() / (patches ** 2).sum()
    return {"rel_recon_error": float(err), "mean_nonzeros": float((code != 0).sum(1).mean())}


def statistics(raw: np.ndarray, atoms: np.ndarray, held_out: np.ndarray, alpha: float) -> dict:
    l1 = np.abs(atoms).sum(1)
    raw_norms = np.linalg.norm(raw, axis=1)
    return {"mean_l1": float(l1.mean()), "min_l1": float(l1.min()), "max_l1": float(l1.max()),
            "raw_l2_min": float(raw_norms.min()), "raw_l2_mean": float(raw_norms.mean()),
            "held_out_patches": len(held_out), **coding_quality(atoms, held_out, alpha)}


def learn(images: torch.Tensor, s: DictionarySettings, n_eval: int = 500) -> tuple[np.ndarray, dict]:
    """Unit-norm atoms (rows, patch dim in (H, W, C) order) and their statistics."""
    if s.learner not in LEARNERS:
        raise BenchError(f"Unknown dictionary learner '{s.learner}'. Allowed: {', '.join(LEARNERS)}.")
    n_fit = s.iterations * s.batch_size
    sample = sample_patches(images, s.patch_size, s.stride, n_fit + n_eval, s.seed)
    t0 = time.time()
    raw = LEARNERS[s.learner](sample[:n_fit], s)
    seconds = time.time() - t0
    atoms = unit_atoms(raw)
    stats = {**statistics(raw, atoms, sample[n_fit:], s.alpha), **atom_statistics(atoms)}
    return atoms, {**stats, "learn_seconds": seconds, "fit_patches": n_fit}


def atoms_to_filters(atoms: np.ndarray, channels: int, patch: int) -> torch.Tensor:
    """Rows in (H, W, C) order -> conv filters L × C × patch × patch."""
    return torch.from_numpy(np.ascontiguousarray(atoms)).float().reshape(-1, patch, patch, channels).permute(0, 3, 1, 2).contiguous()


def obtain(s: DictionarySettings, cache: ArtifactCache | None, data_root: Path | None) -> tuple[torch.Tensor, dict]:
    """Conv filters (L × C × k × k) of the dictionary for `s`, from the cache or learned (and cached) now."""
    if cache is not None and cache.has("dictionary", s.key):
        payload, meta = cache.load("dictionary", s.key)
        return payload["filters"], meta
    root = Path(data_root) if data_root is not None else resolve_data_root()
    images, _ = load_split(s.dataset, "train", str(root))
    progress.log(f"learning the {s.n_atoms}-atom patch dictionary ({s.learner}, {s.iterations} mini-batches of "
                 f"{s.batch_size}) on {s.dataset} training patches")
    atoms, stats = learn(images, s)
    filters = atoms_to_filters(atoms, images.shape[1], s.patch_size)
    meta = {"key": s.key, "settings": asdict(s), "stats": stats, "versions": _versions()}
    progress.log(f"dictionary {s.key}: mean ||d||_1 = {stats['mean_l1']:.3f} (authors: 6.40), held-out relative "
                 f"reconstruction error {stats['rel_recon_error']:.4f}, {stats['mean_nonzeros']:.1f} non-zeros per "
                 f"patch, learned in {stats['learn_seconds']:.1f}s")
    if cache is not None:
        cache.save("dictionary", s.key, {"filters": filters}, meta)
    return filters, meta


def atom_statistics(atoms: np.ndarray) -> dict:
    """How a dictionary looks, to compare two (the learner's vs the published one): mean L1 of the atoms, the share
    of atoms whose entries all have one sign, and how many atoms have a near-twin (|cos| > 0.999 with another)."""
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    cos = np.abs(unit @ unit.T)
    np.fill_diagonal(cos, 0.0)
    single = ((atoms >= 0).all(1) | (atoms <= 0).all(1)).mean()
    return {"mean_l1": float(np.abs(atoms).sum(1).mean()), "single_signed": float(single),
            "near_twins": int((cos.max(1) > 0.999).sum())}


def from_file(path: Path, s: DictionarySettings, channels: int, key: str) -> tuple[torch.Tensor, dict]:
    """Conv filters of a dictionary stored as a .npy of atoms (rows, (H, W, C) order), e.g. the published one; its
    shape must be the settings' (n_atoms × patch·patch·channels) and its atoms unit-norm, as the front end's
    thresholds beta·eps·||d||_1 assume."""
    try:
        atoms = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BenchError(f"Cannot read the dictionary {path} as a .npy array of atoms ({e}).") from None
    want = (s.n_atoms, s.patch_size * s.patch_size * channels)
    if atoms.shape != want or not np.isfinite(atoms).all():
        raise BenchError(f"The dictionary {path} holds an array of shape {atoms.shape}; this front end needs "
                         f"{want[0]} finite atoms of {s.patch_size}x{s.patch_size}x{channels} = {want[1]} values "
                         f"(n_atoms, patch_size) as rows.")
    norms = np.linalg.norm(atoms, axis=1)
    if np.abs(norms - 1).max() > 1e-4:
        raise BenchError(f"The dictionary {path} has atoms of L2 norm {norms.min():.4g} to {norms.max():.4g}; the "
                         f"front end needs unit-norm atoms.")
    meta = {"key": key, "source": str(path.name), "stats": atom_statistics(atoms)}
    return atoms_to_filters(atoms, channels, s.patch_size), meta


def _versions() -> dict:
    return versions()
