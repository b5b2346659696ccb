"""Tables and figures of the comparison, written from run records.

Run records are the dicts the fine-tuning produces, one per (label size, arm, seed):
``dataset``, ``label_size``, ``arm``, ``seed``, ``epochs``, ``steps``, ``best_epoch``,
``val_error``, ``test_error`` (percent), ``time_s`` and ``curve`` ([epoch, val_error] pairs).
Every file is written via a temporary name in its folder and a rename, so a reader never
sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import ticker

from scae import atomic, plots, stats
from scae.plots import plt

RUN_COLUMNS = ("dataset", "label_size", "arm", "seed", "epochs", "steps", "best_epoch",
               "val_error", "test_error", "time_s", "lr_scale")
SUMMARY_COLUMNS = ("dataset", "label_size", "arm", "n", "mean_test_error", "std_test_error",
                   "diff_vs_random", "ci_low", "ci_high", "p_value", "paper_test_error")
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
ARM_COLORS = {"random": "tab:blue", "pretrained": "tab:orange", "frozen": "tab:green"}
ARM_LABELS = {"random": "random init", "pretrained": "CAE pretrained",
              "frozen": "CAE frozen"}


# ---------------------------------------------------------------------------------------------
# Writing and formatting


def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _num(x, digits: int = 6) -> str:
    """A CSV number: blank for None or nan, else ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if not isinstance(x, float):
        return str(x)
    # Rounding first keeps float noise such as a difference of 4e-16 from showing up as such.
    return f"{round(x, 9) + 0.0:.{digits}g}"


def fmt_p(p: float) -> str:
    """A p-value to 3 significant digits, ``<0.001`` below that, ``n/a`` when undefined."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:#.3g}"


def _signed(x: float) -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0, so no "-0.00" is printed.
    return f"{round(x, 2) + 0.0:+.2f}"


def _fmt_diff(d: stats.Difference) -> str:
    if math.isnan(d.ci_low):
        return _signed(d.diff)
    return f"{_signed(d.diff)} [{_signed(d.ci_low)}, {_signed(d.ci_high)}]"


def _fmt_cell(c: stats.Cell | None) -> str:
    if c is None:
        return ""
    if math.isnan(c.std):
        return f"{c.mean:.2f} ({c.n})"
    return f"{c.mean:.2f} ± {c.std:.2f} ({c.n})"


def _sort_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    return sorted(rows, key=lambda r: (int(r["label_size"]), stats.arm_key(r["arm"]),
                                       int(r.get("seed", 0))))


def _dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


# ---------------------------------------------------------------------------------------------
# Tables


def write_runs_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """``runs.csv``: one row per run (no curve), sorted by label size, arm, seed."""
    # Records from before divergence retries existed ran at the configured rate: lr_scale 1.
    body = [[_num(r.get(k)) if k in ("val_error", "test_error", "time_s")
             else r.get(k, 1.0 if k == "lr_scale" else "") for k in RUN_COLUMNS]
            for r in _sort_rows(rows)]
    atomic.write_text(path, _csv_text(RUN_COLUMNS, body))


def write_summary(rows: Sequence[Mapping], dataset: str, csv_path: str | os.PathLike,
                  md_path: str | os.PathLike) -> None:
    """``summary.csv`` (one row per label size and arm) and ``summary.md`` (a readable table
    of means, differences from random with CIs and p-values, and the paper's figures)."""
    cells, diffs = stats.summarize(rows)
    dmap = {(d.label_size, d.arm_a): d for d in diffs}
    body = []
    for c in cells:
        d = dmap.get((c.label_size, c.arm))
        body.append([dataset, c.label_size, c.arm, c.n, _num(c.mean), _num(c.std),
                     _num(d.diff) if d else "", _num(d.ci_low) if d else "",
                     _num(d.ci_high) if d else "", _num(d.p) if d else "",
                     _num(stats.PAPER.get((dataset, c.arm, c.label_size)))])
    atomic.write_text(csv_path, _csv_text(SUMMARY_COLUMNS, body))
    atomic.write_text(md_path, summary_markdown(cells, diffs, dataset) + _retried_note(rows))


def _retried_note(rows: Sequence[Mapping]) -> str:
    """A line listing the runs that finished at a lowered learning rate after diverging."""
    retried = [r for r in _sort_rows(rows) if r.get("lr_scale", 1.0) != 1.0]
    if not retried:
        return ""
    runs = ", ".join(f"{r['arm']} at {r['label_size']:,} labels seed {r['seed']} "
                     f"(x{r['lr_scale']:g})" for r in retried)
    return (f"\n{len(retried)} run(s) diverged and finished at a lowered learning rate "
            f"(config *.divergence_retries; lr_scale in runs.csv): {runs}.\n")


def summary_markdown(cells: Sequence[stats.Cell], diffs: Sequence[stats.Difference],
                     dataset: str) -> str:
    """The text of ``summary.md`` for the cells and differences of :func:`stats.summarize`."""
    name = _dataset_name(dataset)
    lines = [f"# {name}: CAE-pretrained CNN against random initialisation", ""]
    if not cells:
        return "\n".join(lines + ["No finished runs yet.", ""])
    sizes = sorted({c.label_size for c in cells})
    arms = sorted({c.arm for c in cells}, key=stats.arm_key)
    cmap = {(c.label_size, c.arm): c for c in cells}
    dmap = {(d.label_size, d.arm_a): d for d in diffs}
    others = [a for a in arms if a != stats.BASELINE and any((s, a) in dmap for s in sizes)]
    has_paper = any((dataset, a, s) in stats.PAPER for a in ("random", "pretrained") for s in sizes)

    lines += [
        "Test error in percent on the test set, at the epoch of lowest validation error: "
        "mean ± sample standard deviation (ddof=1) over seeds, with the number of seeds in "
        "brackets. Differences are arm − random (negative: the arm has lower error than random "
        "initialisation) with their 95% Welch–Satterthwaite confidence interval; p is the "
        "two-sided Welch t-test (unequal variances) p-value.",
        "",
    ]
    header = ["labels"] + [ARM_LABELS.get(a, a) for a in arms]
    for a in others:
        header += [f"{a} − random [95% CI]", f"p ({a})"]
    if has_paper:
        header += ["paper random", "paper CAE"]
    lines += ["| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for s in sizes:
        row = [f"{s:,}"] + [_fmt_cell(cmap.get((s, a))) for a in arms]
        for a in others:
            d = dmap.get((s, a))
            row += [_fmt_diff(d), fmt_p(d.p)] if d else ["", ""]
        if has_paper:
            row += [_fmt_paper(stats.PAPER.get((dataset, a, s))) for a in ("random", "pretrained")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if has_paper:
        lines += ["Paper: Masci et al. (2011), test error in percent of random and CAE-stack "
                  "initialisation (single figures, no spread reported).", ""]
    lines += [_verdict(s, dmap[s, "pretrained"], dataset) for s in sizes
              if (s, "pretrained") in dmap]
    return "\n".join(lines).rstrip("\n") + "\n"


def _fmt_paper(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _verdict(size: int, d: stats.Difference, dataset: str) -> str:
    """One sentence on whether pretraining changed the test error at ``size`` labels."""
    head = f"- {size:,} labels: "
    pr, pc = (stats.PAPER.get((dataset, a, size)) for a in ("random", "pretrained"))
    paper = f" The paper: {_signed(pc - pr)}." if pr is not None and pc is not None else ""
    if math.isnan(d.p):
        why = ("needs at least 2 seeds per arm" if min(d.n_a, d.n_b) < 2
               else "all seeds of both arms gave the same error")
        return head + (f"pretrained − random = {_signed(d.diff)} points; no significance test "
                       f"({why}).{paper}")
    p = fmt_p(d.p)
    p = p if p.startswith("<") else "= " + p
    ci = f"95% CI {_signed(d.ci_low)} to {_signed(d.ci_high)}, p {p}"
    if not d.significant:
        return head + (f"no significant difference between pretraining and random "
                       f"initialisation ({_signed(d.diff)} points, {ci}).{paper}")
    if d.diff < 0:
        return head + (f"pretraining helped significantly: test error {-d.diff:.2f} points "
                       f"lower than random initialisation ({ci}).{paper}")
    return head + (f"pretraining hurt significantly: test error {d.diff:.2f} points higher "
                   f"than random initialisation ({ci}).{paper}")


# ---------------------------------------------------------------------------------------------
# Figures


def _log_y_if_wide(ax, values: Sequence[float]) -> None:
    """A log y axis with plain-number labels when the values span more than a factor of 10.

    Errors often fall by an order of magnitude across epochs or label sizes; on a log axis the
    small errors, where the arms differ, stay readable.
    """
    v = [x for x in values if not math.isnan(x)]
    if not v or min(v) <= 0 or max(v) / min(v) <= 10:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    # Only the 2s and 5s of each decade are labelled, so the labels do not crowd.
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else ""))


def _size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def error_vs_labels_figure(rows: Sequence[Mapping], dataset: str,
                           path: str | os.PathLike) -> None:
    """Test error against label size (log x): mean ± std per arm, seeds as faint points, and
    the paper's figures as hollow markers."""
    cells, _ = stats.summarize(rows)
    arms = sorted({c.arm for c in cells}, key=stats.arm_key)
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    # Arms are spread slightly along x so their bars and seed points do not hide each other.
    shift = {a: 1.06 ** (i - (len(arms) - 1) / 2) for i, a in enumerate(arms)}
    for a in arms:
        cs = [c for c in cells if c.arm == a]
        color = ARM_COLORS.get(a)
        xs = np.array([c.label_size for c in cs], float) * shift[a]
        ax.errorbar(xs, [c.mean for c in cs], yerr=[0 if math.isnan(c.std) else c.std for c in cs],
                    fmt="o-", color=color, capsize=3, lw=1.5, ms=5, label=ARM_LABELS.get(a, a),
                    zorder=3)
        for x, c in zip(xs, cs):
            ax.scatter(np.full(c.n, x), c.values, s=12, color=color, alpha=0.3, lw=0, zorder=2)
    paper_sizes = sorted({s for (d, _, s) in stats.PAPER if d == dataset})
    for a, marker in (("random", "o"), ("pretrained", "s")):
        ys = [stats.PAPER[dataset, a, s] for s in paper_sizes]
        if ys:
            ax.plot(paper_sizes, ys, marker, ls=":", lw=0.8, ms=8, mfc="none",
                    color=ARM_COLORS[a], label=f"paper: {'random' if a == 'random' else 'CAE'}",
                    zorder=1)
    sizes = sorted({c.label_size for c in cells} | set(paper_sizes))
    ax.set_xscale("log")
    _log_y_if_wide(ax, [v for c in cells for v in c.values]
                   + [v for (d, _, _), v in stats.PAPER.items() if d == dataset])
    if sizes:
        ax.set_xticks(sizes, [_size_label(s) for s in sizes])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{_dataset_name(dataset)}: test error vs labels (mean ± std over seeds)",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if cells or paper_sizes:
        ax.legend(fontsize=8)
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


def curves_figure(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Validation error per epoch, one panel per label size: the mean curve of each arm over
    its seeds with a shaded min–max band."""
    sizes = sorted({int(r["label_size"]) for r in rows})
    n = max(len(sizes), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(3.8 * n, 5.2), 3.4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rs = [r for r in rows if int(r["label_size"]) == size]
        extent = []
        for a in sorted({r["arm"] for r in rs}, key=stats.arm_key):
            curve = _mean_curve([r.get("curve") or [] for r in rs if r["arm"] == a])
            if curve is None:
                continue
            ep, mean, lo, hi = curve
            k = sum(r["arm"] == a for r in rs)
            color = ARM_COLORS.get(a)
            ax.plot(ep, mean, "-", color=color, lw=1.5, label=f"{ARM_LABELS.get(a, a)} (n={k})")
            ax.fill_between(ep, lo, hi, color=color, alpha=0.2, lw=0)
            extent += [lo.min(), hi.max()]
        _log_y_if_wide(ax, extent)
        ax.set_title(f"{size:,} labels", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_ylabel("validation error (%)")
        ax.grid(alpha=0.3, which="both")
        if extent:
            ax.legend(fontsize=8)
    if not sizes:
        axes[0, 0].text(0.5, 0.5, "no finished runs", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    fig.suptitle("Validation error during fine-tuning (mean over seeds, band: min–max)",
                 fontsize=10)
    fig.tight_layout()
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
                     class_names: Sequence[str] | None, path: str | os.PathLike) -> None:
    """2-D PCA of raw pixels (N, D) beside that of the stack's top-layer features (N, F) of the
    same images, coloured by class."""
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if classes.size <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.6))
    names = list(class_names or [])
    panels = ((axes[0], raw, "raw pixels"), (axes[1], feats, "CAE stack top-layer features"))
    for ax, x, what in panels:
        proj, ratio = pca_2d(x)
        for i, k in enumerate(classes):
            m = labels == k
            name = names[int(k)] if int(k) < len(names) else str(k)
            ax.scatter(proj[m, 0], proj[m, 1], s=5, alpha=0.6, lw=0, color=cmap(i % cmap.N),
                       label=name)
        ax.set_title(f"PCA of {what} ({len(labels)} images, "
                     f"D={np.asarray(x).reshape(len(x), -1).shape[1]})\n"
                     f"PC1 {100 * ratio[0]:.1f}% + PC2 {100 * ratio[1]:.1f}% "
                     f"= {100 * ratio.sum():.1f}% of variance", fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5),
                   frameon=False)
    plots.save(fig, path)


def filters_before_after_figure(before: np.ndarray, after: Mapping[str, np.ndarray],
                                path: str | os.PathLike) -> None:
    """First-layer filters (N, H, W, C) of the CAE stack and, beside them, of the CNN after
    fine-tuning for each arm in ``after`` (keyed by arm or by a panel title)."""
    panels = [("CAE stack (before fine-tuning)", np.asarray(before))]
    for key, w in after.items():
        title = f"{ARM_LABELS.get(key, key)}, after fine-tuning" if key in ARM_LABELS else key
        panels.append((title, np.asarray(w)))
    n, h, w_, _ = panels[0][1].shape
    plots.filters_side_by_side(panels, path,
                               suptitle=f"First conv layer: {n} filters of {h}x{w_}")
