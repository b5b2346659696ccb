"""Tables of the comparison, written from run records (its figures: scae.report.compare_plots).

Run records are the dicts the fine-tuning produces, one per (label size, arm, seed):
``dataset``, ``label_size``, ``arm``, ``seed``, ``epochs``, ``steps``, ``best_epoch``,
``val_error``, ``test_error`` (percent), ``cell_time_s`` (the wall time of the cell, shared by
``seeds_together`` seeds trained together) and ``curve`` ([epoch, val_error] pairs);
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

from scae import atomic, provenance
from scae.report import stats

RUN_COLUMNS = ("dataset", "label_size", "train_size", "arm", "seed", "epochs", "steps",
               "best_epoch", "val_error", "test_error", "cell_time_s", "seeds_together",
               "lr_scale", "stack_seed", "pool_size", "failed", "first_eval_train_loss",
               "git_commit", "git_dirty")
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
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


def _sort_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    return sorted(rows, key=lambda r: (int(r["label_size"]), stats.arm_key(r["arm"]),
                                       int(r.get("seed", 0))))


# ---------------------------------------------------------------------------------------------
# Tables


def runs_csv_text(rows: Sequence[Mapping]) -> str:
    """The text of ``runs.csv``: one row per run (no curve), sorted by label size, arm, seed.

    ``train_size`` is the number of images the run trained on (:func:`trained_size`, also for
    records made before they carried it); ``failed`` says whether the run counts as failed, as
    the summary counts it (:func:`failed_runs`): the failure rule's verdict, or the post-hoc
    check for a record made with the rule off or before it existed."""
    failed = {id(r) for r in failed_runs(rows)}
    out = []
    for r in _sort_rows(rows):
        # Records from before divergence retries existed ran at the configured rate: 1.
        fields = dict(r, lr_scale=r.get("lr_scale", 1.0),
                      train_size=r.get("train_size") or trained_size(int(r["label_size"]),
                                                                      [r]))
        fields["failed"] = id(r) in failed
        out.append([_num(fields.get(k)) if k in ("val_error", "test_error", "cell_time_s",
                                                 "first_eval_train_loss")
                    else _csv_value(fields.get(k)) for k in RUN_COLUMNS])
    return _csv_text(RUN_COLUMNS, out)


def _csv_value(x) -> str:
    return "" if x is None else str(x)


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


def trained_size(size: int, rows: Sequence[Mapping]) -> int:
    """The images a cell at ``size`` labels trained on: ``size``, or for a refit cell
    (``refit_full``) the whole training split, validation images included. The paper's
    figures are looked up at this size."""
    refit = [int(r["train_size"]) for r in rows if int(r["label_size"]) == size
             and r.get("refit_full") and r.get("train_size") is not None]
    return max(refit) if refit else size


def label_text(size: int, rows: Sequence[Mapping]) -> str:
    """``1,000``, or ``all (45,000)`` when the label size takes the whole labelled pool: the
    records' ``pool_size`` says so, or (records without it) every seed drew the same subset
    (``subset`` digests), which a seeded draw from a larger pool does not. A refit cell is
    named by the images it trained on: ``all (50,000)``."""
    at = [r for r in rows if int(r["label_size"]) == size]
    if trained_size(size, rows) != size:
        return f"all ({trained_size(size, rows):,})"
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


SUMMARY_COLUMNS = ("dataset", "label_size", "labels", "train_size", "arm", "n", "n_failed",
                   "mean_test_error", "std_test_error", "n_pairs", "diff_vs_random",
                   "diff_test_images", "ci_low", "ci_high", "t", "df", "p_value", "p_holm",
                   "wilcoxon_p", "welch_ci_low", "welch_ci_high", "welch_p",
                   "paper_test_error", "paper_diff_in_ci")
PAPER_MARK = "\u2020"  # marks the paper's transcribed figures in a table's header


def write_summary(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None,
                  csv_path: str | os.PathLike, md_path: str | os.PathLike,
                  stacks: Sequence[Sequence[Mapping]] | None = None) -> None:
    """``summary.csv`` (one row per label size and arm) and ``summary.md`` (a readable table
    of means, paired differences from random with CIs and tests, and, when the test split is
    the paper's, the paper's figures as transcribed).

    ``identity`` is the test split's :class:`~scae.provenance.DataIdentity` (None: the one the
    records carry; a string: the config's data set name, for records made before identities
    were recorded). ``stacks`` are the pretraining metrics of each stack (see
    :func:`stacks_line`). In the csv, the difference, ``ci_low``, ``ci_high``, ``t``, ``df``
    and ``p_value`` are the paired t-test's, ``p_holm`` its Holm-adjusted p over the primary
    tests (pretrained − random); Welch's are in the ``welch_*`` columns.
    """
    csv_text, md_text = summary_texts(rows, identity, stacks)
    atomic.write_text(csv_path, csv_text)
    atomic.write_text(md_path, md_text)


def test_set_size(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None = None) -> int | None:
    """The number of test images the errors are percentages of: the records' ``test_size``,
    else that of the paper's test set when the records were evaluated on it; None: unknown."""
    sizes = {int(r["test_size"]) for r in rows if r.get("test_size")}
    if len(sizes) == 1:
        return sizes.pop()
    key = data_identity(rows, identity).paper_key
    return provenance.TEST_SETS[key][1] if key in provenance.TEST_SETS else None


def _paper_in_ci(d: stats.PairedDifference, paper_key: str | None, size: int) -> bool | None:
    """Whether the paper's difference lies inside the paired 95% CI (None: no CI or no
    paper figure)."""
    paper = stats.paper_difference(paper_key, size)
    if math.isnan(paper) or math.isnan(d.ci_low):
        return None
    return d.ci_low <= paper <= d.ci_high


def summary_texts(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None = None,
                  stacks: Sequence[Sequence[Mapping]] | None = None) -> tuple[str, str]:
    """The texts of ``summary.csv`` and ``summary.md`` (see :func:`write_summary`)."""
    ident = data_identity(rows, identity)
    cells, welch = stats.summarize(rows)
    wmap = {(d.label_size, d.arm_a): d for d in welch}
    pmap = {(d.label_size, d.arm_a): d for d in stats.paired_tests(rows)}
    n_test = test_set_size(rows, ident)
    failed = _failed_counts(rows)
    body = []
    for c in cells:
        d, w = pmap.get((c.label_size, c.arm)), wmap.get((c.label_size, c.arm))
        at = trained_size(c.label_size, rows)
        paper = stats.PAPER.get((ident.paper_key, c.arm, at))
        inside = _paper_in_ci(d, ident.paper_key, at) if d and d.primary else None
        body.append([ident.title, c.label_size, label_text(c.label_size, rows), at, c.arm, c.n,
                     failed.get((c.label_size, c.arm), 0),
                     _num(c.mean), _num(c.std), d.n if d else "", _num(d.diff) if d else "",
                     _num(stats.as_images(d.diff, n_test)) if d else "",
                     _num(d.ci_low) if d else "", _num(d.ci_high) if d else "",
                     _num(d.t) if d else "", _num(d.df) if d else "",
                     _num_p(d.p) if d else "", _num_p(d.p_holm) if d else "",
                     _num_p(d.wilcoxon_p) if d else "",
                     _num(w.ci_low) if w else "", _num(w.ci_high) if w else "",
                     _num_p(w.p) if w else "", _num(paper), "" if inside is None else inside])
    return (_csv_text(SUMMARY_COLUMNS, body),
            summary_markdown(rows, ident, stacks) + _retried_note(rows) + _failed_note(rows))


def _retried_note(rows: Sequence[Mapping]) -> str:
    """A line listing the runs that finished at a lowered learning rate after diverging."""
    retried = [r for r in _sort_rows(rows) if r.get("lr_scale", 1.0) != 1.0]
    if not retried:
        return ""
    runs = ", ".join(f"{r['arm']} at {r['label_size']:,} labels seed {r['seed']} "
                     f"(x{r['lr_scale']:g})" for r in retried)
    return (f"\n{len(retried)} run(s) finished at a lowered learning rate (after a divergence, "
            f"config *.divergence_retries, or a restart by finetune.failure_rule; lr_scale in "
            f"runs.csv): {runs}.\n")


# A run whose best validation error stays this close to chance never trained (it collapsed
# to predicting one class): the post-hoc check for records no failure rule judged.
CHANCE_MARGIN = 2.0


def ruled_by(r: Mapping) -> str:
    """Who decided whether run record ``r`` failed: 'rule' (a failure rule fixed in the config
    judged it while training: its ``failed``), 'off' (``finetune.failure_rule = 'none'``: the
    rule was turned off by choice, and the record carries no ``failed``) or 'legacy' (a record
    made before the failure rule existed: no ``failure_rule``). Only 'rule' records say
    themselves; the others are judged by the post-hoc check of :func:`failed_runs`."""
    if "failed" in r:
        return "rule"
    return "off" if r.get("failure_rule") == "none" else "legacy"


def failed_runs(rows: Sequence[Mapping]) -> list[Mapping]:
    """The runs that failed. A record made under a failure rule says so itself (``failed``,
    set while training by the rule fixed in the config: see
    :func:`scae.study.finetune.apply_failure_rule`). A record made with the rule off
    (``failure_rule = 'none'``), or before it existed, gets the post-hoc check, so that a run
    that never trained is never mixed silently into a mean: its selected error is within
    :data:`CHANCE_MARGIN` points of chance (100 (1 - 1/K) for K classes; the validation error,
    or the test error of a refit). runs.csv's ``failed`` and the summary's counts are this."""
    out = []
    for r in _sort_rows(rows):
        if ruled_by(r) == "rule":
            if r["failed"]:
                out.append(r)
            continue
        chance = 100.0 * (1.0 - 1.0 / int(r.get("num_classes", 10)))
        if _selected_error(r) >= chance - CHANCE_MARGIN:
            out.append(r)
    return out


def _failed_counts(rows: Sequence[Mapping]) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for r in failed_runs(rows):
        key = (int(r["label_size"]), str(r["arm"]))
        out[key] = out.get(key, 0) + 1
    return out


def failure_line(rows: Sequence[Mapping]) -> str:
    """One sentence: the rule that decides a failed run, and how many runs of each arm hit
    it (restarted or failed); '' without records. Records made with the rule off
    (``finetune.failure_rule = 'none'``) are said to be so, and judged post hoc
    (:func:`failed_runs`), as those made before the rule existed."""
    if not rows:
        return ""
    arms = sorted({str(r["arm"]) for r in rows}, key=stats.arm_key)
    failed = failed_runs(rows)
    kinds = [ruled_by(r) for r in rows]
    ruled = [r for r, k in zip(rows, kinds) if k == "rule"]
    off = kinds.count("off")
    counts = []
    for a in arms:
        of = [r for r in rows if r["arm"] == a]
        hits = [r for r in of if r.get("failure_restarts") or r in failed]
        restarted = sum(bool(r.get("failure_restarts")) for r in of)
        counts.append(f"{ARM_LABELS.get(a, a)} {len(hits)} of {len(of)}"
                      + (f" ({restarted} restarted at a lower rate, "
                         f"{sum(r in failed for r in of)} failed)" if restarted else ""))
    post_hoc = f"within {CHANCE_MARGIN:g} points of chance."
    if len(ruled) == len(rows):
        names = sorted({str(r.get("failure_rule")) for r in rows})
        how = (f"The rule was fixed in the config before any run (finetune.failure_rule = "
               f"{', '.join(names)}) and is the same for every arm: a run whose training loss "
               f"at its first evaluation has not fallen below chance, log(number of classes), "
               f"hits it.")
    elif off == len(rows):
        # No rule judged these runs, by choice: no run "hit" one. They still get the post-hoc
        # check, so that a run that never trained is flagged, never mixed silently into a mean.
        return (f"Runs that failed, per arm: {'; '.join(counts)}. The failure rule was off "
                f"(finetune.failure_rule = none): a run counts as failed, post hoc, when its "
                f"selected error is {post_hoc}")
    elif not ruled and not off:
        how = (f"No failure rule ran while these runs trained (records made before it): a "
               f"run counts as failed, post hoc, when its selected error is {post_hoc}")
    elif not off:
        how = (f"{len(ruled)} of the {len(rows)} records were made under a failure rule; the "
               f"others count as failed, post hoc, when their selected error is {post_hoc}")
    else:
        legacy = len(rows) - len(ruled) - off
        made = [f"{len(ruled)} were made under a failure rule"] if ruled else []
        made.append(f"{off} with the rule off (finetune.failure_rule = none)")
        made += [f"{legacy} before the rule existed"] if legacy else []
        how = (f"Of the {len(rows)} records, {_and(made)}; those no rule judged count as "
               f"failed, post hoc, when their selected error is {post_hoc}")
    return f"Runs that hit the failure rule, per arm: {'; '.join(counts)}. {how}"


def _and(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def rates_line(rows: Sequence[Mapping]) -> str:
    """The learning rate each arm fine-tuned at, from the records that name it (``learning_rate``;
    '' when none does: records made before they carried it)."""
    named = [r for r in rows if r.get("learning_rate") is not None]
    if not named:
        return ""
    arms = sorted({r["arm"] for r in named}, key=stats.arm_key)
    parts = []
    for arm in arms:
        rates = sorted({float(r["learning_rate"]) for r in named if r["arm"] == arm})
        parts.append(f"{ARM_LABELS.get(arm, arm)} {' and '.join(f'{x:g}' for x in rates)}")
    return ("Learning rate per arm (an arm's own from finetune.arm_learning_rates where the "
            "config gives one, else finetune.learning_rate; a run's lr_scale multiplies it): "
            f"{'; '.join(parts)}.")


def _selected_error(r: Mapping) -> float:
    """The error a run was selected by: validation, or the test error of a refit (nan: none)."""
    for key in ("val_error", "test_error"):
        v = r.get(key)
        if v is not None and not math.isnan(float(v)):
            return float(v)
    return math.nan


def _failed_note(rows: Sequence[Mapping]) -> str:
    """The runs that failed, and the paired tests without their seeds' pairs."""
    failed = failed_runs(rows)
    if not failed:
        return ""
    runs = ", ".join(f"{r['arm']} at {label_text(int(r['label_size']), rows)} labels seed "
                     f"{r['seed']} ({_selected_error(r):.2f}%)" for r in failed)
    # With the rule off for some records, the line above says how a run counts as failed
    # rather than naming a rule those runs never met.
    see = ("see above how a run counts as failed"
           if any(ruled_by(r) == "off" for r in rows) else "see the failure rule above")
    lines = [f"\n{len(failed)} run(s) failed (never trained; {see}): "
             f"{runs}. They are kept in the means and tests above, where their cells say "
             "\"failed\". For reference, the paired differences without those seeds at those "
             "label sizes:"]
    bad = {(int(r["label_size"]), int(r["seed"])) for r in failed}
    kept = [r for r in rows if (int(r["label_size"]), int(r["seed"])) not in bad]
    sizes = {b[0] for b in bad}
    rest = [d for d in stats.paired_tests(kept) if d.label_size in sizes]
    key = data_identity(rows).paper_key
    for d in rest:
        inside = (_paper_in_ci(d, key, trained_size(d.label_size, rows)) if d.primary
                  else None)
        paper = stats.paper_difference(key, trained_size(d.label_size, rows))
        lines.append(f"- {label_text(d.label_size, rows)} labels, {d.arm_a} − {d.arm_b}: "
                     f"{_fmt_paired(d)} over {d.n} seeds, {p_phrase(d.p)} (unadjusted)"
                     + ("" if inside is None else
                        f"; the paper's {fmt_signed(paper)} (as transcribed) is "
                        f"{'inside' if inside else 'outside'} this interval"))
    if not rest:
        lines.append("- none: no complete pair of seeds is left at those label sizes.")
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |"]
            + ["| " + " | ".join(row) + " |" for row in body] + [""])


def paper_note(paper_key: str | None, exact: str = "") -> str:
    """The sentence under a table that prints the paper's figures: what they are."""
    corroborated = "; ".join(f"{label} at {size:,} labels: {text}"
                             for (key, size), text in stats.CORROBORATED.items()
                             if key == paper_key
                             for label in [provenance.TEST_SETS.get(key, (key,))[0]])
    return (f"{PAPER_MARK} Paper: Masci et al. (2011), test error in percent of random and "
            f"CAE-stack initialisation (single figures, no spread reported), "
            f"{stats.PAPER_CAVEAT}"
            + (f". Of their differences only one is corroborated: {corroborated}"
               if corroborated else "")
            + "; ours − paper is our mean minus the paper's figure (positive: ours is behind "
              "the paper by that many points)." + exact)


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
    key = ident.paper_key
    has_paper = any((key, a, trained_size(s, rows)) in stats.PAPER
                    for a in ("random", "pretrained") for s in sizes)
    labels = {s: label_text(s, rows) for s in sizes}
    failed = _failed_counts(rows)
    n_test = test_set_size(rows, ident)

    lines += ["Test error in percent on the test set, at the epoch of lowest validation error: "
              "mean ± sample standard deviation (ddof=1) over seeds, with the number of seeds "
              "in brackets (and how many of them failed, if any).", ""]
    header = ["labels"] + [ARM_LABELS.get(a, a) for a in arms]
    if has_paper:
        header += [f"paper random{PAPER_MARK}", f"paper CAE{PAPER_MARK}",
                   f"ours − paper{PAPER_MARK} (random, CAE)"]
    body = []
    for s in sizes:
        row = [labels[s]] + [_fmt_cell(cmap.get((s, a)), failed.get((s, a), 0)) for a in arms]
        if has_paper:
            at = trained_size(s, rows)
            row += [_fmt_paper(stats.PAPER.get((key, a, at))) for a in ("random", "pretrained")]
            row.append(_paper_gap(cmap, key, s, at))
        body.append(row)
    lines += ["| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
    if has_paper:
        exact = ("" if ident.exact or ident.note == provenance.LEGACY_NOTE else
                 " Our test set is the paper's, but not pixel for pixel (see above).")
        lines += [paper_note(key, exact), ""]
    whole = [s for s in sizes if labels[s].startswith("all")]
    if whole:
        refit = any(r.get("refit_full") for r in rows if int(r["label_size"]) in whole)
        chosen = sorted({r["full_epochs"] for r in rows
                         if int(r["label_size"]) in whole and r.get("full_epochs")})
        schedule = (f"the full-label schedule chosen on validation beforehand "
                    f"(finetune.full_epochs = {', '.join(map(str, chosen))} epochs, by the "
                    f"sweep's schedule search)" if chosen
                    else "the configured schedule (a fixed default, not chosen on validation)")
        lines += [f"{', '.join(labels[s] for s in whole)}: the label size takes the whole "
                  "labelled pool, so every seed trains on the same images; seeds then differ "
                  "only in initialisation and order."
                  + (f" Refit on every training image, the validation images included, for "
                     f"{schedule}; no selection on validation in the refit: the final model is "
                     "tested." if refit else ""), ""]
    for sentence in (stack_statement(rows), stacks_line(stacks), failure_line(rows),
                     rates_line(rows)):
        if sentence:
            lines += [sentence, ""]

    if paired:
        images = (f"; test images: the mean difference as a count of the {n_test:,} test "
                  f"images (difference × {n_test:,} / 100)" if n_test else "")
        lines += ["Differences are arm − random, paired by seed (for one seed, the arms share "
                  "the labelled subset, the head initialisation and the batch order): the mean "
                  "of the per-seed differences with its 95% confidence interval" + images
                  + "; the two-sided paired t-test p and, for the primary tests (pretrained − "
                  "random, one per label size), Holm's adjusted p over them, which the "
                  "verdicts use; the Wilcoxon signed-rank p as a check; Welch's unpaired "
                  "t-test p as a secondary column. Negative: the arm has lower error than "
                  "random initialisation. Frozen − random is a probe, outside the family and "
                  "not adjusted.", ""]
        header = ["labels", "difference", "pairs", "mean [95% CI]"]
        header += ["test images"] if n_test else []
        header += ["p (paired t)", "p (Holm)", "p (Wilcoxon)", "p (Welch)"]
        header += [f"paper{PAPER_MARK} inside CI?"] if has_paper else []
        body = []
        for d in paired:
            at = trained_size(d.label_size, rows)
            row = [labels[d.label_size], f"{d.arm_a} − {d.arm_b}", str(d.n), _fmt_paired(d)]
            row += [_fmt_images(stats.as_images(d.diff, n_test))] if n_test else []
            row += [fmt_p(d.p), fmt_p(d.p_holm) if d.primary else "—", _fmt_wilcoxon(d),
                    fmt_p(wmap[d.label_size, d.arm_a].p)]
            if has_paper:
                row.append(_fmt_inside(d, key, at) if d.primary else "")
            body.append(row)
        lines += _table(header, body)
        if any(d.wilcoxon_reason[:1].isdigit() for d in paired):
            lines += [f"Wilcoxon n/a (k pairs): with fewer than {stats.WILCOXON_MIN_PAIRS} "
                      f"non-zero differences the signed-rank test cannot reach p < "
                      f"{stats.ALPHA:g} (its smallest two-sided p is 2/2^k).", ""]
    lines += [_verdict(d, labels[d.label_size], key, trained_size(d.label_size, rows), n_test,
                       _negligible_key(rows, ident))
              for d in paired if d.primary]
    return "\n".join(lines).rstrip("\n") + "\n"


def _negligible_key(rows: Sequence[Mapping], ident: provenance.DataIdentity) -> str | None:
    """The data set whose negligible size applies (:data:`stats.NEGLIGIBLE`): the paper's
    test set, else the config's data set name."""
    return ident.paper_key or next((r["dataset"] for r in rows if "dataset" in r), None)


def _fmt_images(x: float) -> str:
    return "n/a" if math.isnan(x) else fmt_signed(x, 0)


def _fmt_inside(d: stats.PairedDifference, paper_key: str | None, size: int) -> str:
    inside = _paper_in_ci(d, paper_key, size)
    if inside is None:
        return ""
    return f"{fmt_signed(stats.paper_difference(paper_key, size))}: {'yes' if inside else 'no'}"


def _fmt_cell(c: stats.Cell | None, failed: int = 0) -> str:
    if c is None:
        return ""
    n = f"({c.n}, {failed} failed)" if failed else f"({c.n})"
    if math.isnan(c.std):
        return f"{c.mean:.2f} {n}"
    return f"{c.mean:.2f} ± {c.std:.2f} {n}"


def _fmt_paired(d: stats.PairedDifference) -> str:
    if math.isnan(d.ci_low):
        return fmt_signed(d.diff)
    return f"{fmt_signed(d.diff)} [{fmt_signed(d.ci_low)}, {fmt_signed(d.ci_high)}]"


def _fmt_wilcoxon(d: stats.PairedDifference) -> str:
    if not math.isnan(d.wilcoxon_p):
        return fmt_p(d.wilcoxon_p)
    few = d.wilcoxon_reason.split(" ", 1)[0]
    return f"n/a ({few} pairs)" if few.isdigit() else f"n/a ({d.wilcoxon_reason})"


def _paper_gap(cmap: Mapping[tuple[int, str], stats.Cell], key: str | None, size: int,
               paper_size: int | None = None) -> str:
    gaps = []
    for arm in ("random", "pretrained"):
        paper = stats.PAPER.get((key, arm, paper_size or size))
        cell = cmap.get((size, arm))
        gaps.append("" if paper is None or cell is None else fmt_signed(cell.mean - paper))
    return ", ".join(gaps) if any(gaps) else ""


def _fmt_paper(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def verdict_lines(rows: Sequence[Mapping],
                  identity: provenance.DataIdentity | str | None = None) -> list[str]:
    """One sentence per label size on whether pretraining changed the test error (the paired
    t-test, Holm-adjusted over the label sizes), the failure rule's counts, then the note on
    runs that failed, if any: the plain answer."""
    ident = data_identity(rows, identity)
    n_test = test_set_size(rows, ident)
    lines = [_verdict(d, label_text(d.label_size, rows), ident.paper_key,
                      trained_size(d.label_size, rows), n_test, _negligible_key(rows, ident))
             for d in stats.paired_tests(rows) if d.primary]
    line = failure_line(rows)
    note = _failed_note(rows).strip()
    return lines + (["", line] if line else []) + (["", note] if note else [])


def _images_phrase(points: float, n_test: int | None) -> str:
    x = stats.as_images(points, n_test)
    return "" if math.isnan(x) else f", about {abs(x):,.0f} of the {n_test:,} test images"


def _paper_sentence(d: stats.PairedDifference, paper_key: str | None, size: int) -> str:
    """Whether the paper's difference lies inside our interval, and what the figure is."""
    paper = stats.paper_difference(paper_key, size)
    if math.isnan(paper):
        return ""
    inside = _paper_in_ci(d, paper_key, size)
    where = ("" if inside is None else
             f", {'inside' if inside else 'outside'} our 95% CI")
    corroborated = stats.CORROBORATED.get((paper_key, size))
    return (f" The paper's difference: {fmt_signed(paper)}{where} ({stats.PAPER_CAVEAT}"
            + (f"; {corroborated}" if corroborated else "") + ").")


def _verdict(d: stats.PairedDifference, label: str, paper_key: str | None,
             paper_size: int | None = None, n_test: int | None = None,
             negligible_key: str | None = None) -> str:
    """One sentence on whether pretraining changed the test error, by the paired t-test's
    Holm-adjusted p, with the paper's difference against our interval."""
    head = f"- {label} labels: "
    paper = _paper_sentence(d, paper_key, paper_size or d.label_size)
    images = _images_phrase(d.diff, n_test)
    if math.isnan(d.p):
        return head + (f"pretrained − random = {fmt_signed(d.diff)} points{images}; no paired "
                       f"test ({d.reason}).{paper}")
    ci = (f"paired over {d.n} seeds: 95% CI {fmt_signed(d.ci_low)} to {fmt_signed(d.ci_high)}, "
          f"{p_phrase(d.p)}, Holm-adjusted {p_phrase(d.p_holm)}")
    key = negligible_key or paper_key
    if stats.negligible(key, d.diff):
        return head + (f"a negligible difference: pretrained − random = {fmt_signed(d.diff)} "
                       f"points{images}, below the {stats.NEGLIGIBLE[key]:g} points that count "
                       f"on this data set, whatever p says ({ci}).{paper}")
    if not d.significant:
        return head + (f"no significant difference between pretraining and random "
                       f"initialisation ({fmt_signed(d.diff)} points{images}; {ci}).{paper}")
    if d.diff < 0:
        return head + (f"pretraining helped significantly: test error "
                       f"{fmt_signed(-d.diff).lstrip('+')} points lower than random "
                       f"initialisation{images} ({ci}).{paper}")
    return head + (f"pretraining hurt significantly: test error {fmt_signed(d.diff).lstrip('+')} "
                   f"points higher than random initialisation{images} ({ci}).{paper}")
