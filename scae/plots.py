"""Figures: filter grids, reconstructions, learning curves and the comparison.

Every figure is drawn from arrays or run records handed in; nothing here trains or reads
checkpoints. Files are written via a temporary name and a rename.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scae import atomic  # noqa: E402


def save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Writes ``fig`` to ``path`` atomically and closes it."""
    path = Path(path)
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:] or "png")
    finally:
        plt.close(fig)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) images, each min-max normalised on its own, into one (H', W', C) image
    with a white border."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    lo = images.reshape(n, -1).min(1)[:, None, None, None]
    hi = images.reshape(n, -1).max(1)[:, None, None, None]
    images = (images - lo) / np.maximum(hi - lo, 1e-8)
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        out[top: top + h, left: left + w] = images[i]
    return out


def show(ax, image: np.ndarray, title: str = "") -> None:
    """Draws one (H, W, 1|3) image without axes."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def filters_figure(filters: np.ndarray, title: str, path: str | os.PathLike) -> None:
    """A grid of filters given as (N, H, W, 1|3) pixel-space images."""
    grid = tile(filters)
    size = max(3.0, min(9.0, grid.shape[1] / 25))
    fig, ax = plt.subplots(figsize=(size, size * grid.shape[0] / grid.shape[1] + 0.4))
    show(ax, grid, title)
    save(fig, path)


def filters_side_by_side(panels: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike,
                         suptitle: str = "") -> None:
    """Several filter grids in one row, each panel (title, (N, H, W, C) filters)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, filters) in zip(np.atleast_1d(axes), panels):
        show(ax, tile(filters), title)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    save(fig, path)


def reconstructions_figure(originals: np.ndarray, recons: np.ndarray, title: str,
                           path: str | os.PathLike) -> None:
    """Originals (top row) against reconstructions (bottom row), uint8 (N, H, W, C) each."""
    n = originals.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6))
    for i in range(n):
        for row, imgs in enumerate((originals, recons)):
            img = imgs[i].astype(np.float32) / 255.0
            show(axes[row, i], img)
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def pretrain_loss_figure(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Train and validation reconstruction MSE per epoch, one panel per layer."""
    layers = sorted({r["layer"] for r in records})
    fig, axes = plt.subplots(1, max(len(layers), 1), figsize=(3.6 * max(len(layers), 1), 3.0),
                             squeeze=False)
    for ax, k in zip(axes[0], layers):
        rs = [r for r in records if r["layer"] == k]
        ep = [r["epoch"] for r in rs]
        ax.plot(ep, [r["train_mse"] for r in rs], "o-", label="train")
        ax.plot(ep, [r["val_mse"] for r in rs], "s--", label="validation")
        ax.set_title(f"CAE layer {k}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("reconstruction MSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)
