"""Tables of the comparison, written from run records (its figures: scae.comparison_plots).

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

from scae import atomic, stats
from scae.comparison_plots import (  # noqa: F401 - the figures, importable from here too
    ARM_COLORS,
    _log_y_if_wide,
    _mean_curve,
    _size_label,
    curves_figure,
    embedding_figure,
    error_vs_labels_figure,
    filters_before_after_figure,
    pca_2d,
)

RUN_COLUMNS = ("dataset", "label_size", "arm", "seed", "epochs", "steps", "best_epoch",
               "val_error", "test_error", "time_s", "lr_scale")
SUMMARY_COLUMNS = ("dataset", "label_size", "arm", "n", "mean_test_error", "std_test_error",
                   "diff_vs_random", "ci_low", "ci_high", "p_value", "paper_test_error")
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
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
