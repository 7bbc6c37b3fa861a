"""CIFAR-10-C (bench.corruptions): every corruption at every severity is the same image on every call and changes a
test image by what its parameters say; the released files are read exactly; what is missing (ImageMagick, the frost
images, a dataset without corruptions) is one paragraph and exit 2 through the real command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import corruptions
from bench.corruptions import generate, spec

REPO = Path(__file__).resolve().parent.parent
CORRUPTIONS_ROOT = Path(os.environ.get("BENCH_CORRUPTIONS") or REPO.parent / "shared" / "corruptions").resolve()
INDICES = [0, 1, 2]


@pytest.fixture(scope="module")
def cifar(data_root):
    from bench.data import load_split

    x, y = load_split("cifar10", "test", str(data_root))
    return x.permute(0, 2, 3, 1).numpy(), y.numpy()  # N x 32 x 32 x 3 uint8, as the generator gets them


@pytest.fixture(scope="module")
def root():
    if not (CORRUPTIONS_ROOT / "frost").is_dir():
        pytest.fail(f"the frost images are not in {CORRUPTIONS_ROOT / 'frost'}: set BENCH_CORRUPTIONS")
    return CORRUPTIONS_ROOT


def make(name, severity, cifar, root, indices=INDICES):
    images, _ = cifar
    return corruptions.regenerate(name, severity, images[indices], indices, root)


@pytest.mark.parametrize("name", spec.CORRUPTIONS)
def test_each_severity_is_deterministic_and_changes_the_image(name, cifar, root):
    images, _ = cifar
    for s in spec.SEVERITIES:
        a, b = make(name, s, cifar, root), make(name, s, cifar, root)
        assert a.dtype == np.uint8 and a.shape == (len(INDICES), 32, 32, 3)
        assert np.array_equal(a, b), f"{name} severity {s} differs between two calls"
        assert not np.array_equal(a, images[INDICES]), f"{name} severity {s} left the images as they were"
    if name not in spec.DETERMINISTIC:
        # the seed is per image: image 0 made as if it were image 5 gets other random draws
        moved = corruptions.regenerate(name, 3, images[[0]], [5], root)
        assert not np.array_equal(moved[0], make(name, 3, cifar, root)[0]), name


def test_seeds_are_fixed_by_corruption_severity_and_image():
    seeds = {corruptions.image_seed(c, s, i) for c in spec.CORRUPTIONS for s in spec.SEVERITIES for i in range(20)}
    assert len(seeds) == len(spec.CORRUPTIONS) * len(spec.SEVERITIES) * 20
    # the same in another process with another string-hash seed: nothing of the interpreter's state enters it
    code = "from bench.corruptions import image_seed; print(image_seed('fog', 3, 7))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert int(other.stdout) == corruptions.image_seed("fog", 3, 7)


def _hsv(images):
    from skimage.color import rgb2hsv

    return np.stack([rgb2hsv(im / 255.0) for im in images])


def test_brightness_adds_c_to_the_hsv_value(cifar, root):
    images, _ = cifar
    before = _hsv(images[INDICES])[..., 2]
    for s, c in zip(spec.SEVERITIES, spec.PARAMS["brightness"]):
        after = _hsv(make("brightness", s, cifar, root))[..., 2]
        expected = np.clip(before + c, 0, 1)
        # within the truncating uint8 cast (under 1/255 per channel, so under 1/255 in V = max channel)
        assert np.abs(after - expected).max() <= 1.01 / 255, (s, np.abs(after - expected).max())


def test_saturate_scales_and_shifts_the_hsv_saturation(cifar, root):
    images, _ = cifar
    before = _hsv(images[INDICES])
    for s, (c0, c1) in zip(spec.SEVERITIES, spec.PARAMS["saturate"]):
        after = _hsv(make("saturate", s, cifar, root))
        expected = np.clip(before[..., 1] * c0 + c1, 0, 1)
        bright = before[..., 2] > 0.2  # S of a dark pixel moves a lot with one grey level
        assert np.median(np.abs(after[..., 1] - expected)[bright]) < 0.02, s


def test_contrast_scales_around_the_channel_mean_by_c(cifar, root):
    images, _ = cifar
    x = images[INDICES].astype(float)
    for s, c in zip(spec.SEVERITIES, spec.PARAMS["contrast"]):
        out = make("contrast", s, cifar, root).astype(float)
        # mean kept (the truncating cast lowers it by half a level on average), spread scaled by c
        assert np.abs(out.mean(axis=(1, 2)) - x.mean(axis=(1, 2)) + 0.5).max() < 0.6, s
        ratio = out.std(axis=(1, 2)) / x.std(axis=(1, 2))
        assert np.abs(ratio - c).max() < 0.03, (s, ratio)


def test_pixelate_block_sizes(cifar, root):
    assert [int(32 * c) for c in spec.PARAMS["pixelate"]] == [30, 28, 27, 24, 20]
    for s, c in zip(spec.SEVERITIES, spec.PARAMS["pixelate"]):
        for img in make("pixelate", s, cifar, root):
            # BOX up from int(32 c) pixels: at most that many distinct rows and columns
            assert len(np.unique(img, axis=0)) <= int(32 * c)
            assert np.unique(img, axis=1).shape[1] <= int(32 * c)


def test_gaussian_noise_has_the_severity_sigma(root):
    grey = np.full((1, 32, 32, 3), 128, np.uint8)
    for s, sigma in zip(spec.SEVERITIES, spec.PARAMS["gaussian_noise"]):
        out = corruptions.regenerate("gaussian_noise", s, grey, [0], root).astype(float)
        assert abs((out - 128).std() / 255 - sigma) < 0.1 * sigma, s


def test_zoom_blur_factor_counts():
    counts = [len(generate.zoom_factors(m)) for m in spec.PARAMS["zoom_blur"]]
    tops = [round(float(generate.zoom_factors(m)[-1]), 2) for m in spec.PARAMS["zoom_blur"]]
    assert counts == [7, 12, 16, 21, 26] and tops == [1.06, 1.11, 1.15, 1.2, 1.25]


@pytest.mark.parametrize("name", ["motion_blur", "defocus_blur", "gaussian_blur", "zoom_blur"])
def test_blurs_keep_a_uniform_image(name, root):
    grey = np.full((1, 32, 32, 3), 100, np.uint8)
    for s in spec.SEVERITIES:
        out = corruptions.regenerate(name, s, grey, [0], root).astype(int)
        assert np.abs(out - 100).max() <= 1, (name, s)


def test_frost_only_adds_to_the_weighted_image(cifar, root):
    images, _ = cifar
    for s, (w, _) in zip(spec.SEVERITIES, spec.PARAMS["frost"]):
        out = make("frost", s, cifar, root).astype(float)
        assert (out >= np.floor(w * images[INDICES]) - 1e-9).all() and out.mean() > w * images[INDICES].mean(), s


def test_plasma_spans_zero_to_one():
    fractal = generate.plasma(np.random.RandomState(0), 32, 3)
    assert fractal.shape == (32, 32) and fractal.min() == 0 and fractal.max() == 1


def _fake_released(root: Path, name: str, labels: np.ndarray, indices) -> np.ndarray:
    """A released-layout <name>.npy (sparse on disk: only the rows the test reads are written) and labels.npy."""
    folder = root / spec.RELEASED_DIR
    folder.mkdir(parents=True)
    data = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(50000, 32, 32, 3))
    rows = [(s - 1) * 10000 + i for s in spec.SEVERITIES for i in indices]
    data[rows] = np.random.RandomState(1).randint(0, 256, size=(len(rows), 32, 32, 3), dtype=np.uint8)
    data.flush()
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    return np.load(folder / f"{name}.npy", mmap_mode="r")


class Recorder(torch.nn.Module):
    """A model that predicts the label it is told for each image and remembers every image it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.seen.append(x.detach().cpu().clone())
        return torch.zeros(len(x), 10) + self.w


def test_released_files_are_read_exactly(cifar, data_root, tmp_path, monkeypatch):
    import bench
    from bench.data import subset_indices
    from bench.runner import Env, attack_uses

    _, labels = cifar
    n, seed = 12, 0
    index = subset_indices(10000, n, seed, "cifar10/test").numpy()
    fake = _fake_released(tmp_path, "fog", labels, index)
    monkeypatch.setenv("BENCH_CORRUPTIONS", str(tmp_path))
    model = Recorder()
    res = bench.evaluate(model, attacks=["corrupt_fog_4"], dataset="cifar10", n=n, profile="smoke", seed=seed,
                         config=REPO / "bench.toml", data_root=data_root, device="cpu")
    # the last forward passes hold the attacked images: every test point, clean errors included
    seen = torch.cat(model.seen)[-n:]
    expected = torch.from_numpy(np.array(fake[3 * 10000 + index])).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(seen, expected)
    assert res["corrupt_fog_4"].robust_acc == float((labels[index] == 0).mean())  # the model always says class 0
    env = Env.create(config=REPO / "bench.toml", data_root=data_root, device="cpu", results_dir=tmp_path / "r")
    assert attack_uses(env, "corrupt_fog_4", "cifar10", "smoke")["inputs"]["source"] == spec.RELEASED
    assert attack_uses(env, "corrupt_snow_4", "cifar10", "smoke")["inputs"]["source"] == spec.REGENERATED


def test_released_labels_must_match_the_test_split(cifar, tmp_path):
    _, labels = cifar
    _fake_released(tmp_path, "fog", (labels + 1) % 10, [0, 1])
    with pytest.raises(corruptions.BenchError, match="labels.npy disagrees"):
        corruptions.read_released(tmp_path, "fog", 2, [0, 1], labels=labels[[0, 1]])


def bench_cli(*args, env_extra=None, pythonpath_first=None):
    env = {**os.environ, "BENCH_PROGRESS": "0", **(env_extra or {})}
    if pythonpath_first:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath_first), str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def _one_paragraph(p, *needles):
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_missing_imagemagick_is_one_paragraph(tmp_path, root):
    shadow = tmp_path / "shadow" / "wand"
    shadow.mkdir(parents=True)
    # what Wand raises when the MagickWand library is not installed
    (shadow / "__init__.py").write_text('raise ImportError("MagickWand shared library not found.")\n')
    p = bench_cli("run", "-d", "natural", "-a", "corrupt_motion_blur_2", "-p", "smoke", "--results-dir",
                  tmp_path / "r", "--corruptions-root", root, pythonpath_first=shadow.parent)
    _one_paragraph(p, "libmagickwand-dev", "Wand", "MagickWand shared library not found")
    assert not (tmp_path / "r" / "results.csv").exists()


def test_missing_frost_folder_and_other_datasets(tmp_path):
    p = bench_cli("run", "-d", "natural", "-a", "corrupt_frost_1", "-p", "smoke", "--results-dir", tmp_path / "r",
                  "--corruptions-root", tmp_path / "empty")
    _one_paragraph(p, str(tmp_path / "empty" / "frost"), "frost1.png")
    p = bench_cli("run", "-d", "natural", "-a", "corrupt_fog_1", "-p", "smoke", "--dataset", "mnist",
                  "--results-dir", tmp_path / "r")
    _one_paragraph(p, "not available for mnist", "MNIST-C")
    assert not (tmp_path / "r" / "results.csv").exists()


def test_table_cells_name_existing_corruptions(config_copy):
    from bench.config import load_config
    from bench.errors import ConfigError

    text = config_copy.read_text()
    assert 'cell = "corruption:fog@5"' in text
    config_copy.write_text(text.replace('cell = "corruption:fog@5"', 'cell = "corruption:fgo@5"', 1))
    with pytest.raises(ConfigError, match="no corruption 'fgo'. .*Did you mean 'fog'"):
        load_config(config_copy)
    config_copy.write_text(text.replace('cell = "corruption:fog@5"', 'cell = "corruption:fog@6"', 1))
    with pytest.raises(ConfigError, match="severity '6' does not exist"):
        load_config(config_copy)


def test_corruption_rows_get_their_own_pooled_table():
    from bench.report import corruption_board
    from bench.report.tables import Results, leaderboard
    from synthetic_results import cell

    rows = []
    # fog: 3 of 4 right at severity 1, 1 of 4 at severity 5; snow severity 1: 2 of 4; clean errors count as errors
    for attack, right in (("corrupt_fog_1", 3), ("corrupt_fog_5", 1), ("corrupt_snow_1", 2)):
        row, _ = cell("vgg16", attack, [True] * 4, [i >= right for i in range(4)], norm="", eps="", seed="0")
        rows.append(row)
    pgd, _ = cell("vgg16", "pgd_linf", [True] * 4, [True, False, False, False], seed="0")
    results = Results(rows + [pgd])
    board = leaderboard(results, "cifar10", "quick")
    assert not [h for h in board.header if h.startswith("corrupt_")] and "pgd_linf (Linf 8/255)" in board.header
    t = corruption_board.table(results.slice("cifar10", "quick", "0"))
    got = dict(zip(t.header, t.rows[0]))
    assert got["mean"].startswith("50.0 ") and got["fog"].startswith("50.0 ") and got["snow"].startswith("50.0 ")
    assert got["severity 1"].startswith("62.5 ") and got["severity 5"].startswith("25.0 ")
    assert got["relative to clean"] == "50.0" and got["cells"] == "3 of 4"
    assert "[" in got["severity 5"]  # snow at severity 5 did not run: the pool says over how many cells
