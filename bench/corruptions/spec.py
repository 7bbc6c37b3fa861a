"""CIFAR-10-C as data (no torch, no image library): the 19 corruptions, their five severities' parameters as the
public generator sets them for 32 x 32 images (Hendrycks & Dietterich, ICLR 2019; hendrycks/robustness,
ImageNet-C/create_c/make_cifar_c.py), and the names the benchmark gives them. The report reads this module to
recognise corruption rows, so it must stay importable without the heavy libraries."""
from __future__ import annotations

SEVERITIES = (1, 2, 3, 4, 5)
GENERATOR_VERSION = 1  # bump when a change to bench.corruptions.generate changes the images it makes

# per corruption: the five severities' parameters (c[severity - 1] in the generator), in CIFAR-10-C's order
PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),                 # sigma of x + N(0, sigma)
    "shot_noise": (500, 250, 100, 75, 50),                             # photons: Poisson(x c) / c
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),                   # salt-and-pepper amount
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),                     # sigma of x + x N(0, sigma)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),                        # sigma
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max delta, iterations
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, anti-alias sigma
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),        # ImageMagick radius, sigma
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),                       # factors np.arange(1, m, 0.01)
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # loc, scale, zoom, threshold, blur radius, blur sigma, blend
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),       # strength, wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                          # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                            # scale around the per-channel mean
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    # (alpha, sigma, affine) as fractions of the image size 32
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                          # PIL BOX down to int(32 c), back to 32
    "jpeg_compression": (80, 65, 58, 50, 40),                           # PIL JPEG quality
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    # loc, scale, sigma, threshold, intensity, mode (0 water, 1 mud)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),   # HSV saturation s c0 + c1
}
CORRUPTIONS = tuple(PARAMS)

# what each needs beyond numpy / scipy / scikit-image / OpenCV / Pillow
NEEDS_IMAGEMAGICK = ("motion_blur", "snow")
NEEDS_FROST = ("frost",)
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # randint(5): frost6 never drawn
# the generator is random for these (no seed set): regenerated images differ from the released ones
DETERMINISTIC = ("gaussian_blur", "defocus_blur", "zoom_blur", "contrast", "brightness", "saturate", "pixelate",
                 "jpeg_compression")

# 001 Table 5.2 evaluates 16 of them (no glass blur, JPEG, saturate), in this column order
TABLE_5_2 = ("gaussian_noise", "shot_noise", "speckle_noise", "impulse_noise", "snow", "fog", "frost", "brightness",
             "defocus_blur", "gaussian_blur", "motion_blur", "zoom_blur", "contrast", "elastic_transform", "pixelate",
             "spatter")
# RobustBench's corruptions leaderboard uses the 15 of Hendrycks & Dietterich's main benchmark
BENCHMARK_15 = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression")

REGENERATED = "CIFAR-10-C (regenerated)"
RELEASED = "CIFAR-10-C (released files)"
RELEASED_DIR = "CIFAR-10-C"  # under the corruptions root: <name>.npy (50000 x 32 x 32 x 3 uint8) and labels.npy
DATASETS = ("cifar10",)  # MNIST-C (Mu & Gilmer 2019) is another benchmark, not generated here

ATTACK_PREFIX = "corrupt_"


def attack_name(corruption: str, severity: int) -> str:
    """The attack entry of one corruption at one severity: corrupt_fog_3."""
    return f"{ATTACK_PREFIX}{corruption}_{severity}"


def parse_attack(name: str) -> tuple[str, int] | None:
    """(corruption, severity) of an attack entry named by attack_name, else None."""
    if not name.startswith(ATTACK_PREFIX):
        return None
    body, _, sev = name[len(ATTACK_PREFIX):].rpartition("_")
    if body in PARAMS and sev.isdigit() and int(sev) in SEVERITIES:
        return body, int(sev)
    return None


def param(corruption: str, severity: int):
    return PARAMS[corruption][severity - 1]
