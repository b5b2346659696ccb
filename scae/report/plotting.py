"""Figures: filter grids, reconstructions, learning curves, and the layout helpers every figure
shares (wrapped titles, integer ticks, tick labels that never overlap, legends outside the data).

Every figure is drawn from arrays or run records handed in; nothing here trains or reads
checkpoints. Files are written via a temporary name and a rename.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from scae import atomic  # noqa: E402

# Characters of a panel title per inch of panel width at the title's font size (9 pt): wrapped
# there, titles of neighbouring panels cannot run into each other.
_TITLE_CHARS_PER_INCH = 11.0
_LINE_INCHES = 0.17  # height of a line of 9-10 pt text, with its spacing


def save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Writes ``fig`` to ``path`` atomically and closes it (in a process that writes no
    files, :func:`scae.atomic.writer`, it only closes it: nothing is rendered)."""
    path = Path(path)
    try:
        if not atomic.writer():
            return
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:] or "png")
    finally:
        plt.close(fig)


def wrap(text: str, width: int) -> str:
    """``text`` with each of its lines wrapped at ``width`` characters."""
    return "\n".join(textwrap.fill(line, max(width, 8), break_on_hyphens=False)
                     for line in text.split("\n"))


def titled(dataset_title: str | None, text: str) -> str:
    """``"<data set>: <text>"``, or ``text`` alone when no data set is named."""
    return f"{dataset_title}: {text}" if dataset_title else text


def integer_ticks(axis) -> None:
    """Only whole-number ticks on ``axis`` (epochs, counts)."""
    axis.set_major_locator(ticker.MaxNLocator(integer=True, nbins="auto", min_n_ticks=2))



def _overlap(a, b, pad: float = 1.0) -> bool:
    return (a.x0 < b.x1 - pad and b.x0 < a.x1 - pad and a.y0 < b.y1 - pad and b.y0 < a.y1 - pad)


def drop_crowded_tick_labels(ax, axis: str = "x",
                             priority: Callable[[float], int] | None = None) -> None:
    """Blanks tick labels of ``ax``'s ``axis`` that would overlap a neighbour's.

    Labels are kept in order of ``priority(value)`` (lower first, then left to right), so e.g.
    the label sizes that were run keep their labels and a nearby size shown only for the
    paper's figures loses its. Needs a drawn figure, so it draws the canvas once.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax_obj = ax.xaxis if axis == "x" else ax.yaxis
    locs = list(ax_obj.get_majorticklocs())
    pairs = [(t, v) for t, v in zip(ax_obj.get_major_ticks(len(locs)), locs)
             if t.label1.get_visible() and t.label1.get_text().strip()]
    pairs.sort(key=lambda tv: ((priority or (lambda _: 0))(tv[1]), tv[1]))
    kept = []
    for tick, _ in pairs:
        box = tick.label1.get_window_extent(renderer)
        if any(_overlap(box, k) for k in kept):
            tick.label1.set_visible(False)
        else:
            kept.append(box)


def legend_outside(ax_or_fig, handles=None, labels=None, **kwargs):
    """A legend to the right of the axes (or below a figure's panels), where it cannot hide
    data."""
    if hasattr(ax_or_fig, "transAxes"):
        args = (handles, labels) if handles is not None else ()
        return ax_or_fig.legend(*args, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                borderaxespad=0.0, frameon=False, **kwargs)
    return ax_or_fig.legend(handles, labels, loc="outside lower center",
                            ncol=min(len(labels), 4), frameon=False, **kwargs)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 1,
         normalise: bool = True) -> np.ndarray:
    """Tiles (N, H, W, C) images into one (H', W', C) image with a white border, each image
    min-max normalised on its own (``normalise``) or taken as values in [0, 1]."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if normalise:
        lo = images.reshape(n, -1).min(1)[:, None, None, None]
        hi = images.reshape(n, -1).max(1)[:, None, None, None]
        images = (images - lo) / np.maximum(hi - lo, 1e-8)
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        out[top: top + h, left: left + w] = images[i]
    return out


def show(ax, image: np.ndarray, title: str = "", title_width: int = 0) -> None:
    """Draws one (H, W, 1|3) image without axes; the title wrapped at ``title_width``
    characters (0: as given)."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(wrap(title, title_width) if title_width else title, fontsize=9)


def filters_figure(filters: np.ndarray, title: str, path: str | os.PathLike) -> None:
    """A grid of filters given as (N, H, W, 1|3) pixel-space images."""
    grid = tile(filters)
    size = max(3.6, min(9.0, grid.shape[1] / 25))
    fig, ax = plt.subplots(figsize=(size, size * grid.shape[0] / grid.shape[1] + 0.6))
    show(ax, grid, title, title_width=int(size * _TITLE_CHARS_PER_INCH))
    save(fig, path)


def filters_side_by_side(panels: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike,
                         suptitle: str = "", max_cols: int = 4) -> None:
    """Filter grids side by side, each panel (title, (N, H, W, C) filters), at most
    ``max_cols`` to a row; titles are wrapped to their panel's width.

    The room above each panel is sized from its tallest title, so titles of any length never
    reach the panel or the title above them.
    """
    n = max(len(panels), 1)
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    width = 3.2  # inches per panel
    chars = int(width * _TITLE_CHARS_PER_INCH)
    titles = [wrap(title, chars) for title, _ in panels]
    grids = [tile(filters) for _, filters in panels]
    aspect = max((g.shape[0] / g.shape[1] for g in grids), default=1.0)
    panel_h = width * aspect
    title_h = 0.12 + _LINE_INCHES * max((t.count("\n") + 1 for t in titles if t), default=0)
    sup = wrap(suptitle, int(width * cols * _TITLE_CHARS_PER_INCH * 0.85)) if suptitle else ""
    sup_h = 0.1 + 1.15 * _LINE_INCHES * (sup.count("\n") + 1) if sup else 0.0
    height = rows * (panel_h + title_h) + sup_h
    fig = plt.figure(figsize=(width * cols, height))
    gs = fig.add_gridspec(rows, cols, left=0.01, right=0.99, bottom=0.0,
                          top=1 - (sup_h + title_h) / height, hspace=title_h / panel_h,
                          wspace=0.08)
    for i, (title, grid) in enumerate(zip(titles, grids)):
        show(fig.add_subplot(gs[i // cols, i % cols]), grid, title)
    if sup:
        fig.suptitle(sup, fontsize=10, y=1 - 0.05 / height, va="top")
    save(fig, path)


def reconstructions_figure(originals: np.ndarray, recons: np.ndarray, title: str,
                           path: str | os.PathLike) -> None:
    """Originals (top row) against reconstructions (bottom row), uint8 (N, H, W, C) each.

    Each row is one image of the N side by side: drawing 2N small images took most of a
    smoke run's figure time."""
    n = originals.shape[0]
    fig, axes = plt.subplots(2, 1, figsize=(max(1.1 * n, 4.0), 2.7), squeeze=False)
    for ax, imgs, name in zip(axes[:, 0], (originals, recons), ("original", "reconstruction")):
        show(ax, tile(np.asarray(imgs, np.float32) / 255.0, cols=n, pad=2, normalise=False))
        ax.set_title(name, fontsize=8, loc="left")
    fig.suptitle(wrap(title, int(max(1.1 * n, 4.0) * 1.6 * _TITLE_CHARS_PER_INCH / 1.1)),
                 fontsize=10)
    save(fig, path)


def pretrain_loss_figure(records: Sequence[dict], path: str | os.PathLike,
                         dataset_title: str | None = None,
                         pixels: str = "pixels") -> None:
    """Train and validation reconstruction MSE per epoch, one panel per layer.

    ``pixels`` says what layer 1 reconstructs (e.g. "pixels scaled to [0, 1]"), the unit of its
    MSE; deeper layers reconstruct the pooled maps of the layer below.
    """
    layers = sorted({r["layer"] for r in records})
    n = max(len(layers), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.5), squeeze=False, layout="constrained")
    handles = []
    for ax, k in zip(axes[0], layers):
        rs = sorted((r for r in records if r["layer"] == k), key=lambda r: r["epoch"])
        ep = [r["epoch"] for r in rs]
        handles = [ax.plot(ep, [r["train_mse"] for r in rs], "o-", ms=4, label="train")[0],
                   ax.plot(ep, [r["val_mse"] for r in rs], "s--", ms=4, label="validation")[0]]
        what = pixels if k == 1 else f"layer {k - 1}'s pooled maps"
        ax.set_title(wrap(f"CAE layer {k}: reconstructs {what}", 40), fontsize=9)
        ax.set_xlabel("epoch")
        integer_ticks(ax.xaxis)
        if len(ep) == 1:  # one point: a tick at it, not at the padding around it
            ax.set_xticks(ep)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=5))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:.3g}"))
        ax.set_ylabel("reconstruction MSE")
        ax.grid(alpha=0.3)
    if not layers:
        axes[0, 0].text(0.5, 0.5, "no finished epochs", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    else:
        legend_outside(fig, handles, [h.get_label() for h in handles], fontsize=9)
    fig.suptitle(titled(dataset_title, "CAE pretraining, reconstruction error per epoch")
                 + "\n(MSE: mean squared error per input value)", fontsize=10)
    save(fig, path)
