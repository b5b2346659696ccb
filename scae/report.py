"""Tables and figures of the comparison, written from run records.

Run records are the dicts the fine-tuning produces, one per (label size, arm, seed):
``dataset``, ``label_size``, ``arm``, ``seed``, ``epochs``, ``steps``, ``best_epoch``,
``val_error``, ``test_error`` (percent), ``time_s`` and ``curve`` ([epoch, val_error] pairs);
optionally ``stack_seed`` (the seed of the stack a pretrained or frozen run started from),
``pool_size`` (the labelled pool a subset was drawn from), ``refit_full`` and the test split's
identity (:meth:`scae.provenance.DataIdentity.to_record`).
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

from scae import atomic, plots, provenance, stats
from scae.plots import plt

RUN_COLUMNS = ("dataset", "label_size", "arm", "seed", "epochs", "steps", "best_epoch",
               "val_error", "test_error", "time_s", "lr_scale", "stack_seed", "pool_size")
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
ARM_COLORS = {"random": "tab:blue", "pretrained": "tab:orange", "frozen": "tab:green"}
ARM_LABELS = {"random": "random init", "pretrained": "CAE pretrained",
              "frozen": "CAE frozen"}


# ---------------------------------------------------------------------------------------------
# Writing and formatting

MINUS = "\u2212"  # a typographic minus in the tables, so a sign is never lost in a font


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


def _num_p(p: float) -> str:
    """A CSV p-value: significant digits, never rounded to 0 (p = 1e-12 stays 1e-12)."""
    return "" if p is None or math.isnan(p) else f"{p:.6g}"


def fmt_p(p: float) -> str:
    """A p-value for a table: 3 significant digits down to 0.001, then two in scientific
    notation, ``< 1e-6`` below that (never 0), ``n/a`` when undefined."""
    if p is None or math.isnan(p):
        return "n/a"
    if p < 1e-6:
        return "< 1e-6"
    return f"{p:.1e}" if p < 0.001 else f"{p:#.3g}"


def p_phrase(p: float) -> str:
    """``p = 0.0123`` or ``p < 1e-6``, for sentences."""
    s = fmt_p(p)
    return f"p {s}" if s.startswith("<") else f"p = {s}"


def fmt_signed(x: float, digits: int = 2) -> str:
    """A difference with its sign: ``+0.85``, ``−0.85``; a value too small for ``digits``
    decimals gets as many more as its first significant digit needs (−0.004 prints as
    ``−0.004``, never ``+0.00``); zero (below 1e-6, the precision of a recorded error) is
    ``0.00``; nan is ``n/a``."""
    if math.isnan(x):
        return "n/a"
    if abs(x) < 1e-6:
        return f"{0:.{digits}f}"
    k = digits
    while round(abs(x), k) == 0:
        k += 1
    return f"{'+' if x > 0 else MINUS}{abs(x):.{k}f}"


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


def runs_csv_text(rows: Sequence[Mapping]) -> str:
    """The text of ``runs.csv``: one row per run (no curve), sorted by label size, arm, seed."""
    # Records from before divergence retries existed ran at the configured rate: lr_scale 1.
    body = [[_num(r.get(k)) if k in ("val_error", "test_error", "time_s")
             else r.get(k, 1.0 if k == "lr_scale" else "") for k in RUN_COLUMNS]
            for r in _sort_rows(rows)]
    return _csv_text(RUN_COLUMNS, body)


def write_runs_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """``runs.csv`` (see :func:`runs_csv_text`)."""
    atomic.write_text(path, runs_csv_text(rows))


def data_identity(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None = None
                  ) -> provenance.DataIdentity:
    """The identity of the data the runs were evaluated on: ``identity`` when given as one,
    else the one the run records carry (see :func:`scae.provenance.from_record`), else, for
    records from before identities were recorded, the config's data set name ``identity``."""
    if isinstance(identity, provenance.DataIdentity):
        return identity
    found = {provenance.from_record(r) for r in rows if "data_title" in r}
    if len(found) > 1:
        raise ValueError(f"run records of several test sets mixed: "
                         f"{sorted(i.title for i in found)}")
    if found:
        return found.pop()
    name = identity if identity is not None else next((r["dataset"] for r in rows
                                                       if "dataset" in r), "")
    return provenance.from_record({"dataset": name})


def label_text(size: int, rows: Sequence[Mapping]) -> str:
    """``1,000``, or ``all (45,000)`` when the label size takes the whole labelled pool: the
    records' ``pool_size`` says so, or (records without it) every seed drew the same subset
    (``subset`` digests), which a seeded draw from a larger pool does not."""
    at = [r for r in rows if int(r["label_size"]) == size]
    pools = {int(r["pool_size"]) for r in at if r.get("pool_size") is not None}
    if pools:
        return f"all ({size:,})" if size >= min(pools) else f"{size:,}"
    subsets = {r["subset"] for r in at if r.get("subset")}
    seeds = {int(r.get("seed", 0)) for r in at if r.get("subset")}
    return f"all ({size:,})" if len(subsets) == 1 and len(seeds) > 1 else f"{size:,}"


def stack_statement(rows: Sequence[Mapping]) -> str:
    """One sentence on which CAE stack the pretrained and frozen runs started from, from the
    records' ``stack_seed``; '' when the records do not say."""
    used = [r for r in rows if r.get("stack_seed") is not None]
    if not used:
        return ""
    stacks = {int(r["stack_seed"]) for r in used}
    seeds = {int(r.get("seed", 0)) for r in used}
    if len(stacks) == 1 and len(seeds) > 1:
        return ("One stack shared by every seed (pretraining variance not included): seeds "
                "differ in fine-tuning only, so the spreads and tests leave out the variance of "
                "pretraining itself.")
    if all(int(r["stack_seed"]) == int(r.get("seed", 0)) for r in used):
        if len(seeds) == 1:
            return "One stack, pretrained with the run's seed (a single seed)."
        return ("One stack per seed: seed i's pretrained and frozen runs start from the stack "
                "pretrained with seed i (its own initialisation, noise and batch order), so the "
                "spreads and tests include the variance of pretraining.")
    return (f"{len(stacks)} stacks over {len(seeds)} seeds (the stack of each run is its "
            f"stack_seed in runs.jsonl).")


def stacks_line(metrics: Sequence[Sequence[Mapping]] | None) -> str:
    """The final validation reconstruction MSE of each CAE layer, as mean ± std over the
    stacks whose ``pretrain/metrics.jsonl`` records are given (one list per stack)."""
    spreads = stats.over_stacks(metrics or [])
    if not spreads:
        return ""
    n = max(s.n for s in spreads.values())
    parts = [f"layer {k} {s.mean:.3g}" + ("" if math.isnan(s.std) else f" ± {s.std:.2g}")
             + ("" if s.n == n else f" ({s.n} stacks)") for k, s in spreads.items()]
    over = "one stack" if n == 1 else f"mean ± std over {n} stacks"
    return (f"Reconstruction MSE of the CAE stack on validation images after its last epoch "
            f"({over}): {', '.join(parts)}.")


SUMMARY_COLUMNS = ("dataset", "label_size", "labels", "arm", "n", "mean_test_error",
                   "std_test_error", "n_pairs", "diff_vs_random", "ci_low", "ci_high", "t",
                   "df", "p_value", "wilcoxon_p", "welch_ci_low", "welch_ci_high", "welch_p",
                   "paper_test_error")


def write_summary(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None,
                  csv_path: str | os.PathLike, md_path: str | os.PathLike,
                  stacks: Sequence[Sequence[Mapping]] | None = None) -> None:
    """``summary.csv`` (one row per label size and arm) and ``summary.md`` (a readable table
    of means, paired differences from random with CIs and tests, and, when the test split is
    the paper's, the paper's figures).

    ``identity`` is the test split's :class:`~scae.provenance.DataIdentity` (None: the one the
    records carry; a string: the config's data set name, for records made before identities
    were recorded). ``stacks`` are the pretraining metrics of each stack (see
    :func:`stacks_line`). In the csv, the difference, ``ci_low``, ``ci_high``, ``t``, ``df``
    and ``p_value`` are the paired t-test's; Welch's are in the ``welch_*`` columns.
    """
    csv_text, md_text = summary_texts(rows, identity, stacks)
    atomic.write_text(csv_path, csv_text)
    atomic.write_text(md_path, md_text)


def summary_texts(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None = None,
                  stacks: Sequence[Sequence[Mapping]] | None = None) -> tuple[str, str]:
    """The texts of ``summary.csv`` and ``summary.md`` (see :func:`write_summary`)."""
    ident = data_identity(rows, identity)
    cells, welch = stats.summarize(rows)
    wmap = {(d.label_size, d.arm_a): d for d in welch}
    pmap = {(d.label_size, d.arm_a): d for d in stats.paired_tests(rows)}
    body = []
    for c in cells:
        d, w = pmap.get((c.label_size, c.arm)), wmap.get((c.label_size, c.arm))
        paper = stats.PAPER.get((ident.paper_key, c.arm, c.label_size))
        body.append([ident.title, c.label_size, label_text(c.label_size, rows), c.arm, c.n,
                     _num(c.mean), _num(c.std), d.n if d else "", _num(d.diff) if d else "",
                     _num(d.ci_low) if d else "", _num(d.ci_high) if d else "",
                     _num(d.t) if d else "", _num(d.df) if d else "",
                     _num_p(d.p) if d else "", _num_p(d.wilcoxon_p) if d else "",
                     _num(w.ci_low) if w else "", _num(w.ci_high) if w else "",
                     _num_p(w.p) if w else "", _num(paper)])
    return (_csv_text(SUMMARY_COLUMNS, body),
            summary_markdown(rows, ident, stacks) + _retried_note(rows))


def _retried_note(rows: Sequence[Mapping]) -> str:
    """A line listing the runs that finished at a lowered learning rate after diverging."""
    retried = [r for r in _sort_rows(rows) if r.get("lr_scale", 1.0) != 1.0]
    if not retried:
        return ""
    runs = ", ".join(f"{r['arm']} at {r['label_size']:,} labels seed {r['seed']} "
                     f"(x{r['lr_scale']:g})" for r in retried)
    return (f"\n{len(retried)} run(s) diverged and finished at a lowered learning rate "
            f"(config *.divergence_retries; lr_scale in runs.csv): {runs}.\n")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |"]
            + ["| " + " | ".join(row) + " |" for row in body] + [""])


def summary_markdown(rows: Sequence[Mapping],
                     identity: provenance.DataIdentity | str | None = None,
                     stacks: Sequence[Sequence[Mapping]] | None = None) -> str:
    """The text of ``summary.md`` for run records (see :func:`write_summary`)."""
    ident = data_identity(rows, identity)
    lines = [f"# {ident.title}: CAE-pretrained CNN against random initialisation", ""]
    if ident.note:
        lines += [f"Test set: {ident.note}.", ""]
    cells, welch = stats.summarize(rows)
    if not cells:
        return "\n".join(lines + ["No finished runs yet.", ""])
    sizes = sorted({c.label_size for c in cells})
    arms = sorted({c.arm for c in cells}, key=stats.arm_key)
    cmap = {(c.label_size, c.arm): c for c in cells}
    wmap = {(d.label_size, d.arm_a): d for d in welch}
    paired = stats.paired_tests(rows)
    pmap = {(d.label_size, d.arm_a): d for d in paired}
    key = ident.paper_key
    has_paper = any((key, a, s) in stats.PAPER for a in ("random", "pretrained") for s in sizes)
    labels = {s: label_text(s, rows) for s in sizes}

    lines += ["Test error in percent on the test set, at the epoch of lowest validation error: "
              "mean ± sample standard deviation (ddof=1) over seeds, with the number of seeds "
              "in brackets.", ""]
    header = ["labels"] + [ARM_LABELS.get(a, a) for a in arms]
    if has_paper:
        header += ["paper random", "paper CAE", "ours − paper (random, CAE)"]
    body = []
    for s in sizes:
        row = [labels[s]] + [_fmt_cell(cmap.get((s, a))) for a in arms]
        if has_paper:
            row += [_fmt_paper(stats.PAPER.get((key, a, s))) for a in ("random", "pretrained")]
            row.append(_paper_gap(cmap, key, s))
        body.append(row)
    lines += ["| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
    if has_paper:
        exact = ("" if ident.exact or ident.note == provenance.LEGACY_NOTE else
                 " Our test set is the paper's, but not pixel for pixel (see above).")
        lines += ["Paper: Masci et al. (2011), test error in percent of random and CAE-stack "
                  "initialisation (single figures, no spread reported); ours − paper is our mean "
                  "minus the paper's figure (positive: ours is behind the paper by that many "
                  "points)." + exact, ""]
    whole = [s for s in sizes if labels[s].startswith("all")]
    if whole:
        refit = any(r.get("refit_full") for r in rows if int(r["label_size"]) in whole)
        lines += [f"{', '.join(labels[s] for s in whole)}: the label size takes the whole "
                  "labelled pool, so every seed trains on the same images; seeds then differ "
                  "only in initialisation and order."
                  + (" Refit on every training image, the validation images included, for the "
                     "schedule chosen on validation beforehand; no selection on validation in "
                     "the refit: the final model is tested." if refit else ""), ""]
    for sentence in (stack_statement(rows), stacks_line(stacks)):
        if sentence:
            lines += [sentence, ""]

    if paired:
        lines += ["Differences are arm − random, paired by seed (for one seed, the arms share "
                  "the labelled subset, the head initialisation and the batch order): the mean "
                  "of the per-seed differences with its 95% confidence interval and the "
                  "two-sided paired t-test p (the test the verdicts use); the Wilcoxon "
                  "signed-rank p as a check; Welch's unpaired t-test p as a secondary column. "
                  "Negative: the arm has lower error than random initialisation.", ""]
        body = [[labels[d.label_size], f"{d.arm_a} − {d.arm_b}", str(d.n),
                 _fmt_paired(d), fmt_p(d.p), _fmt_wilcoxon(d),
                 fmt_p(wmap[d.label_size, d.arm_a].p)] for d in paired]
        lines += _table(["labels", "difference", "pairs", "mean [95% CI]", "p (paired t)",
                         "p (Wilcoxon)", "p (Welch)"], body)
        if any(d.wilcoxon_reason[:1].isdigit() for d in paired):
            lines += [f"Wilcoxon n/a (k pairs): with fewer than {stats.WILCOXON_MIN_PAIRS} "
                      f"non-zero differences the signed-rank test cannot reach p < "
                      f"{stats.ALPHA:g} (its smallest two-sided p is 2/2^k).", ""]
    lines += [_verdict(d, labels[d.label_size], key) for d in paired if d.arm_a == "pretrained"]
    return "\n".join(lines).rstrip("\n") + "\n"


def _fmt_paired(d: stats.PairedDifference) -> str:
    if math.isnan(d.ci_low):
        return fmt_signed(d.diff)
    return f"{fmt_signed(d.diff)} [{fmt_signed(d.ci_low)}, {fmt_signed(d.ci_high)}]"


def _fmt_wilcoxon(d: stats.PairedDifference) -> str:
    if not math.isnan(d.wilcoxon_p):
        return fmt_p(d.wilcoxon_p)
    few = d.wilcoxon_reason.split(" ", 1)[0]
    return f"n/a ({few} pairs)" if few.isdigit() else f"n/a ({d.wilcoxon_reason})"


def _paper_gap(cmap: Mapping[tuple[int, str], stats.Cell], key: str | None, size: int) -> str:
    gaps = []
    for arm in ("random", "pretrained"):
        paper, cell = stats.PAPER.get((key, arm, size)), cmap.get((size, arm))
        gaps.append("" if paper is None or cell is None else fmt_signed(cell.mean - paper))
    return ", ".join(gaps) if any(gaps) else ""


def _fmt_paper(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _verdict(d: stats.PairedDifference, label: str, paper_key: str | None) -> str:
    """One sentence on whether pretraining changed the test error, by the paired t-test."""
    head = f"- {label} labels: "
    pr, pc = (stats.PAPER.get((paper_key, a, d.label_size)) for a in ("random", "pretrained"))
    paper = f" The paper: {fmt_signed(pc - pr)}." if pr is not None and pc is not None else ""
    if math.isnan(d.p):
        return head + (f"pretrained − random = {fmt_signed(d.diff)} points; no paired test "
                       f"({d.reason}).{paper}")
    ci = (f"paired over {d.n} seeds: 95% CI {fmt_signed(d.ci_low)} to {fmt_signed(d.ci_high)}, "
          f"{p_phrase(d.p)}")
    if not d.significant:
        return head + (f"no significant difference between pretraining and random "
                       f"initialisation ({fmt_signed(d.diff)} points, {ci}).{paper}")
    if d.diff < 0:
        return head + (f"pretraining helped significantly: test error "
                       f"{fmt_signed(-d.diff).lstrip('+')} points lower than random "
                       f"initialisation ({ci}).{paper}")
    return head + (f"pretraining hurt significantly: test error {fmt_signed(d.diff).lstrip('+')} "
                   f"points higher than random initialisation ({ci}).{paper}")


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
