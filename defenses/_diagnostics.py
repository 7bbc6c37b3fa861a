"""PNG figures for `bench diagnose`: the polarizing front end's activation histograms and the HaH chapter's
block-wise sparsity / SNR comparison. Written atomically; matplotlib runs headless (Agg)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import atomic_write_bytes  # noqa: E402

from ._polarizing_layers import HIST_BINS, HIST_RANGE  # noqa: E402


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_front_histogram(counts: list[int], jump: float, eps: float, danger_frac: float, title: str,
                         path: Path) -> None:
    """Histogram of y = (w*x)/||w||_1 with the quantiser thresholds ±j and their danger zones (±eps) shaded."""
    lo, hi = HIST_RANGE
    width = (hi - lo) / HIST_BINS
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([lo + i * width for i in range(HIST_BINS)], counts, width=width, align="edge", color="0.45")
    for t in (-jump, jump):
        ax.axvspan(t - eps, t + eps, color="tab:red", alpha=0.15, lw=0)
        ax.axvline(t, color="tab:red", lw=1)
    ax.set_xlim(lo, hi)
    ax.set_yscale("log")  # background pixels pile up at y = 0; the danger zones hold orders of magnitude less
    ax.set_xlabel(r"normalised front-end output $y = (w * x)/\|w\|_1$")
    ax.set_ylabel("count (log scale)")
    ax.set_title(f"{title}: {danger_frac:.2%} in danger zones |y ± {jump:g}| < {eps:g}", fontsize=9)
    save_png(fig, path)


def plot_blockwise(stats: dict[str, dict], sigma: float, path: Path) -> None:
    """Two panels, one line per model: squared Hoyer sparsity of each block's output and SNR of its input."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, s in stats.items():
        blocks = range(1, len(s["hoyer"]) + 1)
        ax1.plot(blocks, s["hoyer"], marker="o", label=name)
        ax2.plot(blocks, s["snr_db"], marker="o", label=name)
    ax1.set_title("squared Hoyer measure of block outputs (lower = sparser)", fontsize=9)
    ax2.set_title(f"SNR of block inputs under Gaussian noise σ = {sigma:g}", fontsize=9)
    ax1.set_xlabel("block")
    ax2.set_xlabel("block")
    ax2.set_ylabel("dB")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    save_png(fig, path)
