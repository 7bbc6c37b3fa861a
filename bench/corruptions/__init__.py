"""Common corruptions (CIFAR-10-C): where the corrupted images come from, and the checks that come first.

Two sources, chosen per corruption:
  * the released files, when the corruptions root holds `CIFAR-10-C/<corruption>.npy` (and `labels.npy`): read
    exactly (severity s, test image i is row (s - 1) * 10000 + i), labelled "CIFAR-10-C (released files)";
  * otherwise regenerated here (bench.corruptions.generate) with a fixed seed per (corruption, severity, test
    image), the same on every run and machine with the same libraries, labelled "CIFAR-10-C (regenerated)".
The corruptions root is --corruptions-root, else BENCH_CORRUPTIONS, else settings.corruptions_root of bench.toml.
Frost needs the generator's frost images under `<root>/frost/`; motion blur and snow need ImageMagick through
Wand. What a source reads (file digests, library versions) joins the cell's key, so a changed source is a new cell."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import BenchError
from . import spec
from .spec import (CORRUPTIONS, DATASETS, FROST_FILES, GENERATOR_VERSION, NEEDS_FROST, NEEDS_IMAGEMAGICK, RELEASED,
                   RELEASED_DIR, REGENERATED, SEVERITIES)

TEST_IMAGES = 10000  # CIFAR-10's test split, the released files' block per severity
IMAGEMAGICK_HINT = ("install ImageMagick's MagickWand library (Debian / Ubuntu: apt-get install libmagickwand-dev) and "
                    "the Python package Wand (pip install Wand==0.7.2)")


def resolve_corruptions_root(flag: str | os.PathLike | None = None,
                             config_value: str | os.PathLike | None = None) -> Path:
    """--corruptions-root, then BENCH_CORRUPTIONS, then settings.corruptions_root (already absolute), then ./corruptions."""
    for value in (flag, os.environ.get("BENCH_CORRUPTIONS"), config_value):
        if value:
            return Path(os.path.expanduser(str(value))).resolve()
    return Path("corruptions").resolve()


def image_seed(corruption: str, severity: int, index: int) -> int:
    """The seed of one corrupted image: fixed by (corruption, severity, test image), not by the run's seed, so
    regenerated CIFAR-10-C is one data set, like the released one."""
    digest = hashlib.sha256(f"cifar10c/{corruption}/{severity}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise BenchError(f"Common corruptions are not available for {dataset}: CIFAR-10-C is made from CIFAR-10's "
                         f"test images, and MNIST-C (Mu & Gilmer 2019) is another benchmark with other corruptions, "
                         f"which bench does not generate. Allowed dataset: {', '.join(DATASETS)}.")


def check_name(corruption: str) -> None:
    if corruption not in CORRUPTIONS:
        from ..errors import did_you_mean

        raise BenchError(f"Unknown corruption '{corruption}'. {did_you_mean(corruption, CORRUPTIONS)}")


def released_file(root: Path, corruption: str) -> Path:
    return Path(root) / RELEASED_DIR / f"{corruption}.npy"


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def imagemagick_version() -> str:
    """ImageMagick's version through Wand; a BenchError naming what to install when either is missing."""
    try:
        from wand.version import MAGICK_VERSION
    except ImportError as e:  # no Wand package, or Wand without the MagickWand library (its own ImportError)
        raise BenchError(f"Motion blur and snow (CIFAR-10-C) blur with ImageMagick through Wand, which cannot be "
                         f"loaded here ({str(e).splitlines()[0] if str(e) else type(e).__name__}): {IMAGEMAGICK_HINT}. "
                         f"Or place the released CIFAR-10-C files under the corruptions root "
                         f"(CIFAR-10-C/motion_blur.npy, snow.npy, labels.npy), which need no ImageMagick.") from None
    return str(MAGICK_VERSION)


def frost_dir(root: Path) -> Path:
    return Path(root) / "frost"


def check_frost(root: Path) -> dict[str, str]:
    """sha256 of the five frost images the generator draws from; a BenchError naming the folder when one is missing."""
    folder = frost_dir(root)
    missing = [f for f in FROST_FILES if not (folder / f).is_file()]
    if missing:
        raise BenchError(f"The frost corruption (CIFAR-10-C) overlays the generator's frost images, but "
                         f"{folder} lacks {', '.join(missing)}. Put frost1.png, frost2.png, frost3.png, frost4.jpg and "
                         f"frost5.jpg from hendrycks/robustness (ImageNet-C/create_c/, Apache-2.0) in a folder "
                         f"'frost' under the corruptions root (--corruptions-root, BENCH_CORRUPTIONS or "
                         f"settings.corruptions_root; now {root}), or place the released CIFAR-10-C/frost.npy there.")
    return {f: sha256_of(folder / f) for f in FROST_FILES}


def library_versions() -> dict[str, str]:
    """The libraries the regenerated images depend on (their versions join the cell key and the cache key)."""
    import cv2
    import PIL
    import scipy
    import skimage

    return {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
            "opencv": cv2.__version__, "pillow": PIL.__version__}


def source_inputs(corruption: str, dataset: str, root: Path) -> dict:
    """What the images of `corruption` are made from, checked: the released file's digests, or the generator's
    version, its libraries (ImageMagick where used) and the frost images' digests. A BenchError (one paragraph)
    when something is missing or the dataset has no corruptions."""
    check_dataset(dataset)
    check_name(corruption)
    path = released_file(root, corruption)
    if path.is_file():
        labels = path.parent / "labels.npy"
        if not labels.is_file():
            raise BenchError(f"{path} is there but {labels} is not: the released CIFAR-10-C files come with "
                             f"labels.npy, which bench checks against the test split's labels. Copy it beside them.")
        return {"source": RELEASED, "file": f"{RELEASED_DIR}/{path.name}", "sha256": sha256_of(path),
                "labels_sha256": sha256_of(labels)}
    out = {"source": REGENERATED, "generator": GENERATOR_VERSION, "libraries": library_versions()}
    if corruption in NEEDS_IMAGEMAGICK:
        out["libraries"]["imagemagick"] = imagemagick_version()
    if corruption in NEEDS_FROST:
        out["frost"] = check_frost(root)
    return out


@functools.lru_cache(maxsize=2)
def frost_images(root: str) -> list[np.ndarray]:
    """The five frost images as OpenCV reads them (BGR), shrunk to a fifth like the generator's CIFAR-10 frost."""
    import cv2

    out = []
    for f in FROST_FILES:
        img = cv2.imread(str(frost_dir(Path(root)) / f))
        if img is None:
            raise BenchError(f"{frost_dir(Path(root)) / f} is not an image OpenCV can read; restore the original file.")
        out.append(cv2.resize(img, (0, 0), fx=0.2, fy=0.2))
    return out


def regenerate(corruption: str, severity: int, images: np.ndarray, indices, root: Path | None = None) -> np.ndarray:
    """CIFAR-10-C images of `corruption` at `severity` for test images `images` (N x 32 x 32 x 3 uint8) whose
    positions in the test split are `indices`: each from its own seed (image_seed)."""
    from .generate import corrupt_image

    if severity not in SEVERITIES:
        raise BenchError(f"severity {severity!r} does not exist. Allowed: {', '.join(map(str, SEVERITIES))}.")
    check_name(corruption)
    res = frost_images(str(root)) if corruption in NEEDS_FROST else None
    c = spec.param(corruption, severity)
    out = np.empty_like(images)
    for k, (img, i) in enumerate(zip(images, indices)):
        out[k] = corrupt_image(corruption, img, c, np.random.RandomState(image_seed(corruption, severity, int(i))), res)
    return out


def read_released(root: Path, corruption: str, severity: int, indices, labels=None) -> np.ndarray:
    """Rows of the released `<corruption>.npy` for test images `indices` at `severity`, exactly as stored; with
    `labels`, labels.npy must agree with them (the files follow the test split's order)."""
    path = released_file(root, corruption)
    data = np.load(path, mmap_mode="r")
    if data.shape != (len(SEVERITIES) * TEST_IMAGES, 32, 32, 3) or data.dtype != np.uint8:
        raise BenchError(f"{path} holds {data.dtype} {tuple(data.shape)}, not the released CIFAR-10-C layout: "
                         f"uint8 ({len(SEVERITIES) * TEST_IMAGES}, 32, 32, 3), severities 1-5 stacked. Replace it "
                         f"with the released file (Zenodo record 2535967) or remove it to regenerate.")
    rows = (severity - 1) * TEST_IMAGES + np.asarray(indices, dtype=np.int64)
    if labels is not None:
        stored = np.load(path.parent / "labels.npy", mmap_mode="r")
        if len(stored) != len(SEVERITIES) * TEST_IMAGES or not np.array_equal(
                np.asarray(stored[rows], dtype=np.int64), np.asarray(labels, dtype=np.int64)):
            raise BenchError(f"{path.parent / 'labels.npy'} disagrees with CIFAR-10's test labels at the images "
                             f"asked for: the files are not CIFAR-10-C in the test split's order. Replace them "
                             f"with the released files or remove them to regenerate.")
    return np.array(data[rows])


__all__ = ["CORRUPTIONS", "SEVERITIES", "REGENERATED", "RELEASED", "resolve_corruptions_root", "image_seed",
           "source_inputs", "regenerate", "read_released", "check_dataset", "spec"]
