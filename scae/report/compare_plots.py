"""The comparison's figures, drawn from run records and arrays: test error against labels,
validation curves, first-layer filters before and after fine-tuning, and a PCA embedding.

Run records are those of :mod:`scae.report.tables`. Each figure takes the data set's display name
(``dataset_title``, e.g. "CIFAR-10") for its title; without it the name is looked up from the
records' ``dataset``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import ticker

from scae.report import plotting as plots
from scae.report import stats
from scae.report.plotting import plt

ARM_COLORS = {"random": "tab:blue", "pretrained": "tab:orange", "frozen": "tab:green"}
SEED_ZORDER = 4  # error_vs_labels' single seeds, above the bars (zorder 3)
PAPER_REACH = 1.25  # how far beyond the run sizes a paper size is still drawn (a factor)
X_MARGIN = 1.2  # the log x axis's room either side of the outermost size (a factor)


def arm_label(arm: str) -> str:
    """The display name of an arm (e.g. "CAE pretrained")."""
    from scae.report.tables import ARM_LABELS  # report imports this module: import at call time

    return ARM_LABELS.get(arm, arm)


def _default_title(dataset: str | None) -> str | None:
    from scae.report.tables import DATASET_NAMES

    return DATASET_NAMES.get(dataset, dataset) if dataset else None


def _log_y_if_wide(ax, values: Sequence[float]) -> bool:
    """A log y axis with plain-number labels when the values span more than a factor of 10;
    returns whether it made one.

    Errors often fall by an order of magnitude across epochs or label sizes; on a log axis the
    small errors, where the arms differ, stay readable.
    """
    v = [x for x in values if not math.isnan(x)]
    if not v or min(v) <= 0 or max(v) / min(v) <= 10:
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    # Only the 2s and 5s of each decade are labelled, so the labels do not crowd.
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else ""))
    return True


def _label_text(size: int, rows: Sequence[Mapping]) -> str:
    """The name of a label size as the tables give it (``all (50,000)`` for a refit cell)."""
    from scae.report.tables import label_text

    return label_text(size, rows)


def _trained_size(size: int, rows: Sequence[Mapping]) -> int:
    from scae.report.tables import trained_size

    return trained_size(size, rows)


def _size_label(n: int) -> str:
    """A label size as a tick label: 100, 1k, 2.5k, 45k, 1,234."""
    if n >= 1000 and len(f"{n / 1000:g}") <= 4:
        return f"{n / 1000:g}k"
    return f"{n:,}"


def error_vs_labels_figure(rows: Sequence[Mapping], dataset: str, path: str | os.PathLike,
                           dataset_title: str | None = None) -> None:
    """Test error against the images a cell trained on (log x): the median per arm with bars
    from the lowest to the highest seed (a run that failed widens its bar, never a spread it
    does not have), every seed as a point drawn over the bars, and the paper's figures for
    ``dataset`` at the sizes that were run as hollow markers; the x axis spans those sizes. A
    run label size is named as in the tables (``all (50,000)``)."""
    title = dataset_title or _default_title(dataset)
    cells, _ = stats.summarize(rows)
    at = {c.label_size: _trained_size(c.label_size, rows) for c in cells}
    arms = sorted({c.arm for c in cells}, key=stats.arm_key)
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    # Arms are spread slightly along x so their bars and seed points do not hide each other.
    shift = {a: 1.06 ** (i - (len(arms) - 1) / 2) for i, a in enumerate(arms)}
    for a in arms:
        cs = [c for c in cells if c.arm == a]
        color = ARM_COLORS.get(a)
        xs = np.array([at[c.label_size] for c in cs], float) * shift[a]
        med = np.array([np.median(c.values) for c in cs])
        lo = med - np.array([min(c.values) for c in cs])
        hi = np.array([max(c.values) for c in cs]) - med
        ax.errorbar(xs, med, yerr=[lo, hi], fmt="o-", color=color, capsize=3, lw=1.5, ms=5,
                    label=arm_label(a), zorder=3)
        for x, c in zip(xs, cs):  # on top of the bars, ringed so that they show on their own
            ax.scatter(np.full(c.n, x), c.values, s=14, color=color, alpha=0.7,
                       edgecolors="white", lw=0.5, zorder=SEED_ZORDER)
    run_sizes = set(at.values())
    # The paper's figures only within the sizes that were run (a 1k-only run is not drawn on
    # an axis to 50k); PAPER_REACH lets a paper size stand beside the nearest run size (its
    # 50k beside a 45k pool).
    paper_sizes = sorted({s for (d, _, s) in stats.PAPER if d == dataset and run_sizes
                          and min(run_sizes) / PAPER_REACH <= s <= max(run_sizes) * PAPER_REACH})
    for a, marker in (("random", "o"), ("pretrained", "s")):
        ys = [stats.PAPER[dataset, a, s] for s in paper_sizes]
        if ys:
            ax.plot(paper_sizes, ys, marker, ls=":", lw=0.8, ms=8, mfc="none",
                    color=ARM_COLORS[a], zorder=1,
                    label=f"paper: {'random init' if a == 'random' else 'CAE pretrained'}")
    # The whole-pool cell keeps the tables' name (``all (50,000)``); other sizes stay short.
    names = {v: name if name.startswith("all") else _size_label(v)
             for k, v in at.items() for name in [_label_text(k, rows)]}
    sizes = sorted(run_sizes | set(paper_sizes))
    ax.set_xscale("log")
    if sizes:  # the sizes drawn, with room for the arms' spread around them
        ax.set_xlim(min(sizes) / X_MARGIN, max(sizes) * X_MARGIN)
    log_y = _log_y_if_wide(ax, [v for c in cells for v in c.values]
                           + [v for (d, _, s), v in stats.PAPER.items()
                              if d == dataset and s in paper_sizes])
    ax.set_xlabel("labelled training images (log scale)")
    ax.set_ylabel("test error (%, log scale)" if log_y else "test error (%)")
    ax.set_title(plots.titled(title, "test error against labelled training images")
                 + "\nmedian, bars from the lowest to the highest seed; dots: single seeds",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if sizes:
        ax.set_xticks(sizes, [names.get(s, _size_label(s)) for s in sizes])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        plots.legend_outside(ax, fontsize=8)  # first: it narrows the axes
        # Sizes that were run keep their labels; a nearby size only the paper has loses its.
        plots.drop_crowded_tick_labels(ax, "x", priority=lambda s: 0 if s in run_sizes else 1)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    plots.save(fig, path)


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]]):
    """Epochs common to all curves, and the mean, min and max validation error there."""
    maps = [{float(e): float(v) for e, v in c} for c in curves if len(c)]
    if not maps:
        return None
    epochs = sorted(set.intersection(*(set(m) for m in maps)))
    if not epochs:
        return None
    vals = np.array([[m[e] for e in epochs] for m in maps])
    return np.array(epochs), vals.mean(0), vals.min(0), vals.max(0)


def _seeds_note(counts: Mapping[str, int]) -> str:
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        return f"{n} seed{'s' if n != 1 else ''} per arm"
    return ", ".join(f"{arm_label(a)}: {n}" for a, n in counts.items()) + " seeds"


def curves_figure(rows: Sequence[Mapping], path: str | os.PathLike,
                  dataset_title: str | None = None) -> None:
    """Validation error per epoch, one panel per label size: the mean curve of each arm over
    its seeds with a shaded min–max band."""
    title = dataset_title or _default_title(rows[0].get("dataset") if rows else None)
    # A cell without a validation curve (a refit has no validation images) gets no panel.
    sizes = sorted({int(r["label_size"]) for r in rows
                    if any(math.isfinite(float(v)) for _, v in r.get("curve") or [])})
    n = max(len(sizes), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(3.9 * n, 5.2), 3.8), squeeze=False,
                             layout="constrained")
    handles: dict[str, object] = {}
    for ax, size in zip(axes[0], sizes):
        rs = [r for r in rows if int(r["label_size"]) == size]
        extent, counts = [], {}
        for a in sorted({r["arm"] for r in rs}, key=stats.arm_key):
            curve = _mean_curve([r.get("curve") or [] for r in rs if r["arm"] == a])
            if curve is None:
                continue
            ep, mean, lo, hi = curve
            counts[a] = sum(r["arm"] == a for r in rs)
            color = ARM_COLORS.get(a)
            handles.setdefault(a, ax.plot(ep, mean, "-", color=color, lw=1.5,
                                          label=arm_label(a))[0])
            ax.fill_between(ep, lo, hi, color=color, alpha=0.2, lw=0)
            extent += [lo.min(), hi.max()]
        log_y = _log_y_if_wide(ax, extent)
        ax.set_title(f"{_label_text(size, rows)} labels"
                     + (f"\n{_seeds_note(counts)}" if counts else ""),
                     fontsize=9)
        ax.set_xlabel("epoch")
        plots.integer_ticks(ax.xaxis)
        ax.set_ylabel("validation error (%, log scale)" if log_y else "validation error (%)")
        ax.grid(alpha=0.3, which="both")
    if not sizes:
        axes[0, 0].text(0.5, 0.5, "no validation curves", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    if handles:
        plots.legend_outside(fig, list(handles.values()),
                             [arm_label(a) for a in handles], fontsize=9)
    fig.suptitle(plots.titled(title, "validation error during fine-tuning")
                 + " (line: mean over seeds; band: min to max)", fontsize=10)
    plots.save(fig, path)


def pca_2d(x: np.ndarray, power_iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 2) projection of ``x`` (N, D) on its first two principal components, and the
    fraction of the total variance each explains.

    A full SVD of thousands of images by thousands of pixels takes tens of seconds on a small
    CPU, so large inputs go through randomized subspace iteration (Halko et al. 2011): a few
    passes of ``x`` over a 10-column basis, then the SVD of a 10 x D matrix. Deterministic.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(0)
    total = float(np.sum(x * x))
    if min(x.shape) <= 64:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
    else:
        q = x @ np.random.default_rng(0).standard_normal((x.shape[1], 10))
        for _ in range(power_iters):
            # Re-orthonormalising each pass keeps the basis from collapsing onto PC1.
            q, _ = np.linalg.qr(x @ (x.T @ np.linalg.qr(q)[0]))
        ub, s, _ = np.linalg.svd(q.T @ x, full_matrices=False)
        u = q @ ub
    k = min(2, s.size)
    proj = np.zeros((len(x), 2))
    proj[:, :k] = u[:, :k] * s[:k]
    ratio = np.zeros(2)
    if total > 0:
        ratio[:k] = s[:k] ** 2 / total
    return proj, ratio


def embedding_figure(raw: np.ndarray, feats: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str] | None, path: str | os.PathLike,
                     dataset_title: str | None = None, inputs: str = "raw pixels") -> None:
    """2-D PCA of the stack's input images (N, D) beside that of its top-layer features
    (N, F) of the same images, coloured by class. ``inputs`` names what the images are (the
    preprocessing they had)."""
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if classes.size <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.8), layout="constrained")
    names = list(class_names or [])
    panels = ((axes[0], raw, inputs), (axes[1], feats, "CAE stack's top-layer features"))
    for ax, x, what in panels:
        proj, ratio = pca_2d(x)
        for i, k in enumerate(classes):
            m = labels == k
            name = names[int(k)] if int(k) < len(names) else str(k)
            ax.scatter(proj[m, 0], proj[m, 1], s=5, alpha=0.6, lw=0, color=cmap(i % cmap.N),
                       label=name)
        dim = np.asarray(x).reshape(len(x), -1).shape[1]
        ax.set_title(f"{what} ({dim:,} values per image)\nPC1 and PC2 explain "
                     f"{100 * ratio.sum():.1f}% of the variance", fontsize=9)
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
        ax.set_xticks([])
        ax.set_yticks([])
    plots.legend_outside(axes[1], fontsize=8, markerscale=2.5, title="class",
                         title_fontsize=8)
    fig.suptitle(plots.titled(dataset_title, f"{len(labels):,} images on their first two "
                              "principal components"), fontsize=10)
    plots.save(fig, path)


def filters_before_after_figure(before: np.ndarray, after: Mapping[str, np.ndarray],
                                path: str | os.PathLike,
                                dataset_title: str | None = None) -> None:
    """First-layer filters (N, H, W, C) of the CAE stack and, beside them, of the CNN after
    fine-tuning for each arm in ``after`` (keyed by arm or by a panel title)."""
    panels = [("CAE stack\n(before fine-tuning)", np.asarray(before))]
    for key, w in after.items():
        label = arm_label(key)
        title = f"{label}\n(after fine-tuning)" if label != key else key
        panels.append((title, np.asarray(w)))
    n, h, w_, _ = panels[0][1].shape
    plots.filters_side_by_side(
        panels, path, suptitle=plots.titled(
            dataset_title, f"first conv layer, {n} filters of {h}x{w_} pixels"))
