"""Summary statistics of the comparison: per-cell means over seeds, paired tests between arms
(the design's primary test) and Welch tests (kept as a secondary check).

All errors are test errors in percent. A difference is ``arm - random``, so a negative
difference means the arm beats random initialisation. For one seed, every arm shares the
labelled subset, the head initialisation and the batch order, so the arms are compared seed
by seed: :func:`paired_tests` matches runs by seed and tests the per-seed differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from scae.config import ARMS

# Display and sort order of the arms; unknown arms follow in name order.
BASELINE = "random"
PRIMARY = "pretrained"  # the arm whose difference from BASELINE is the study's question
ALPHA = 0.05
# Per-seed differences closer than this (percentage points) count as equal: recorded test
# errors are float32 percentages, so "equal" differences can disagree in the 7th digit, and
# that noise must not turn into a spurious spread (and a p-value of ~0).
TIE_TOLERANCE = 1e-6
# The Wilcoxon signed-rank test cannot give p < ALPHA with fewer non-zero differences than
# this (its smallest two-sided p with m pairs is 2 / 2**m: 0.0625 at m = 5).
WILCOXON_MIN_PAIRS = 6

# Masci et al. (2011), test error in percent, as transcribed in ../shared/docs/paper.md: recalled,
# not checked against the paper's PDF, so every output that prints them says so
# (PAPER_CAVEAT). 'pretrained' is the paper's "CAE stack" row.
PAPER: dict[tuple[str, str, int], float] = {
    ("mnist", "random", 1000): 7.63,
    ("mnist", "random", 10000): 2.21,
    ("mnist", "random", 50000): 0.79,
    ("mnist", "pretrained", 1000): 7.23,
    ("mnist", "pretrained", 10000): 1.88,
    ("mnist", "pretrained", 50000): 0.71,
    ("cifar10", "random", 1000): 55.52,
    ("cifar10", "random", 10000): 35.23,
    ("cifar10", "random", 50000): 22.50,
    ("cifar10", "pretrained", 1000): 52.30,
    ("cifar10", "pretrained", 10000): 34.35,
    ("cifar10", "pretrained", 50000): 21.80,
}


PAPER_CAVEAT = "as transcribed; not checked against the paper's PDF"
# The one paper figure a later reproduction corroborates: Kohlbrenner et al. (TU Berlin, 2017)
# report that "pre-training boosted the classification accuracy by up to 3.2% (on CIFAR-10
# restricted to 1k training datapoints)", the size of the paper's CIFAR-10 1k gap.
CORROBORATED: dict[tuple[str, int], str] = {
    ("cifar10", 1000): "a gap of about 3.2 points is corroborated by Kohlbrenner et al. (2017), "
                       "\"Pre-Training CNNs Using Convolutional Autoencoders\"",
}
# A pretrained-minus-random difference smaller than this many points is called negligible
# whatever its p: on MNIST 0.1 points is 10 of the 10,000 test digits, less than the spread of
# one arm over seeds at the full label size.
NEGLIGIBLE: dict[str, float] = {"mnist": 0.1}


def _scipy_stats():
    """scipy.stats, imported when a test is first computed: its memory is not carried through
    a training job's peaks."""
    import scipy.stats
    return scipy.stats


@dataclass
class Cell:
    """Test errors of one (label size, arm) over its seeds."""

    label_size: int
    arm: str
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan when n < 2
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class Difference:
    """``mean_a - mean_b`` of two cells at one label size, with a Welch test and 95% CI.

    ``ci_low``, ``ci_high``, ``t``, ``df`` and ``p`` are nan when either arm has fewer than two
    seeds or both arms have zero variance (the test is undefined there).
    """

    label_size: int
    arm_a: str
    arm_b: str
    n_a: int
    n_b: int
    diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    df: float = math.nan

    @property
    def significant(self) -> bool:
        """Whether p < 0.05 (False when p is nan)."""
        return bool(self.p < ALPHA)


def arm_key(arm: str) -> tuple[int, str]:
    """Sort key putting the arms in :data:`ARMS` order, any others after by name."""
    return (ARMS.index(arm), "") if arm in ARMS else (len(ARMS), arm)


def _sample_var(values: np.ndarray) -> float:
    # Identical values must give exactly 0: the floating-point mean of e.g. [1.1] * 3 is not
    # exactly 1.1, and a tiny spurious variance would make the t-test report p ~ 0.
    if values.size < 2:
        return math.nan
    if np.all(values == values[0]):
        return 0.0
    return float(np.var(values, ddof=1))


def make_cell(label_size: int, arm: str, values: Sequence[float],
              seeds: Sequence[int] = ()) -> Cell:
    """A :class:`Cell` from per-seed test errors."""
    v = np.asarray(values, np.float64)
    var = _sample_var(v)
    return Cell(label_size=int(label_size), arm=arm, n=int(v.size),
                mean=float(v.mean()) if v.size else math.nan,
                std=math.sqrt(var) if not math.isnan(var) else math.nan,
                values=[float(x) for x in v], seeds=[int(s) for s in seeds])


def welch(a: Cell, b: Cell, confidence: float = 0.95) -> Difference:
    """Welch's t-test and Welch–Satterthwaite confidence interval for ``mean(a) - mean(b)``."""
    diff = a.mean - b.mean
    nan = math.nan
    ci_low = ci_high = t = p = df = nan
    if a.n >= 2 and b.n >= 2:
        va = _sample_var(np.asarray(a.values)) / a.n
        vb = _sample_var(np.asarray(b.values)) / b.n
        if va + vb > 0:
            se = math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
            half = float(_scipy_stats().t.ppf(0.5 + confidence / 2, df)) * se
            ci_low, ci_high = diff - half, diff + half
            # scipy warns about precision loss when one sample is constant, yet the Welch
            # statistic is well defined as long as the other one has spread.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = _scipy_stats().ttest_ind(a.values, b.values, equal_var=False)
            t, p = float(res.statistic), float(res.pvalue)
    return Difference(label_size=a.label_size, arm_a=a.arm, arm_b=b.arm, n_a=a.n, n_b=b.n,
                      diff=diff, ci_low=ci_low, ci_high=ci_high, t=t, p=p, df=df)


def summarize(rows: Iterable[Mapping]) -> tuple[list[Cell], list[Difference]]:
    """Cells per (label size, arm) and each arm's difference from random per label size.

    ``rows`` are run records (``label_size``, ``arm``, ``seed``, ``test_error``, ...) of one
    data set. Cells come sorted by label size then arm; differences are ``arm - random`` for
    every other arm present at a label size where random is present too.
    """
    rows = list(rows)
    datasets = {r["dataset"] for r in rows if "dataset" in r}
    if len(datasets) > 1:
        raise ValueError(f"run records of several data sets mixed: {sorted(datasets)}")
    groups: dict[tuple[int, str], list[Mapping]] = {}
    for r in rows:
        groups.setdefault((int(r["label_size"]), str(r["arm"])), []).append(r)
    cells = []
    for size, arm in sorted(groups, key=lambda k: (k[0], arm_key(k[1]))):
        rs = sorted(groups[size, arm], key=lambda r: r.get("seed", 0))
        cells.append(make_cell(size, arm, [r["test_error"] for r in rs],
                               [r.get("seed", i) for i, r in enumerate(rs)]))
    by_key = {(c.label_size, c.arm): c for c in cells}
    diffs = [welch(c, by_key[c.label_size, BASELINE]) for c in cells
             if c.arm != BASELINE and (c.label_size, BASELINE) in by_key]
    return cells, diffs


@dataclass
class PairedDifference:
    """The per-seed differences ``arm_a - arm_b`` at one label size, over the seeds both arms
    ran, with a paired t-test (the primary test), its 95% CI, and a Wilcoxon signed-rank test.

    ``ci_low``, ``ci_high``, ``t``, ``df`` and ``p`` are nan when fewer than two pairs exist or
    all differences are equal (the t-test is undefined there; ``reason`` says which).
    ``wilcoxon_p`` is nan when the signed-rank test cannot inform (``wilcoxon_reason`` says
    why): all differences zero, or too few non-zero ones to ever reach p < 0.05.
    """

    label_size: int
    arm_a: str
    arm_b: str
    seeds: list[int]
    differences: list[float]
    diff: float  # mean of the per-seed differences
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    reason: str = ""
    wilcoxon_p: float = math.nan
    wilcoxon_reason: str = ""
    # Holm-adjusted p over the table's primary tests (pretrained - random at every label
    # size; see paired_tests); nan for a test outside that family.
    p_holm: float = math.nan

    @property
    def n(self) -> int:
        """The number of seed-matched pairs."""
        return len(self.seeds)

    @property
    def primary(self) -> bool:
        """Whether this is one of the primary tests (pretrained against random)."""
        return self.arm_a == PRIMARY and self.arm_b == BASELINE

    @property
    def significant(self) -> bool:
        """Whether the test's p is below 0.05: the Holm-adjusted p for a primary test, the
        raw p for a secondary one (False when that p is nan)."""
        return bool((self.p_holm if self.primary else self.p) < ALPHA)


def paired(label_size: int, arm_a: str, a: Mapping[int, float], arm_b: str,
           b: Mapping[int, float], confidence: float = 0.95) -> PairedDifference:
    """Paired comparison of ``a`` and ``b`` (test errors keyed by seed) on their common seeds.

    The t-test and its interval come from :func:`scipy.stats.ttest_rel` and
    ``TtestResult.confidence_interval``; the check is :func:`scipy.stats.wilcoxon`.
    """
    seeds = sorted(set(a) & set(b))
    va = np.array([a[s] for s in seeds], np.float64)
    vb = np.array([b[s] for s in seeds], np.float64)
    d = va - vb
    nan = math.nan
    out = PairedDifference(label_size=int(label_size), arm_a=arm_a, arm_b=arm_b,
                           seeds=[int(s) for s in seeds], differences=[float(x) for x in d],
                           diff=float(d.mean()) if d.size else nan, ci_low=nan, ci_high=nan,
                           t=nan, df=nan, p=nan)
    if d.size < 2:
        out.reason = "needs at least 2 seeds run by both arms"
    elif np.ptp(d) <= TIE_TOLERANCE:
        out.reason = "every seed gave the same difference"
    else:
        res = _scipy_stats().ttest_rel(va, vb)
        ci = res.confidence_interval(confidence)
        out.t, out.p, out.df = float(res.statistic), float(res.pvalue), float(res.df)
        out.ci_low, out.ci_high = float(ci.low), float(ci.high)
    nonzero = d[np.abs(d) > TIE_TOLERANCE]
    if nonzero.size == 0:
        out.wilcoxon_reason = "all differences zero" if d.size else "no pairs"
    elif nonzero.size < WILCOXON_MIN_PAIRS:
        out.wilcoxon_reason = (f"{nonzero.size} non-zero pair{'s' * (nonzero.size > 1)}: "
                               f"cannot reach p < {ALPHA:g}")
    else:
        # Differences within the tolerance are ties at zero, dropped as Wilcoxon prescribes.
        out.wilcoxon_p = float(_scipy_stats().wilcoxon(nonzero).pvalue)
    return out


def paired_tests(rows: Iterable[Mapping]) -> list[PairedDifference]:
    """Each arm's seed-matched comparison with random, per label size, from run records.

    Sorted by label size then arm. A seed that only one of the two arms has finished is left
    out of that pair (``n`` says how many pairs entered).
    """
    by_cell: dict[tuple[int, str], dict[int, float]] = {}
    for r in rows:
        by_cell.setdefault((int(r["label_size"]), str(r["arm"])), {})[int(r.get("seed", 0))] = \
            float(r["test_error"])
    out = []
    for size, arm in sorted(by_cell, key=lambda k: (k[0], arm_key(k[1]))):
        if arm == BASELINE or (size, BASELINE) not in by_cell:
            continue
        out.append(paired(size, arm, by_cell[size, arm], BASELINE, by_cell[size, BASELINE]))
    primary = [d for d in out if d.primary]
    for d, q in zip(primary, holm([d.p for d in primary])):
        d.p_holm = q
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their given order.

    With the m defined p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted
    p_(i) is max over j <= i of min(1, (m - j + 1) p_(j)): it controls the family-wise error
    rate at any level without assuming independence. A nan (an undefined test) stays nan and
    does not count in m.
    """
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(x) for x in out]


def as_images(points: float, test_size: int | None) -> float:
    """A difference of ``points`` percentage points as a number of test images (nan when the
    test set's size is unknown)."""
    return math.nan if not test_size else points * test_size / 100.0


def paper_difference(paper_key: str | None, size: int) -> float:
    """The paper's pretrained - random difference at ``size`` labels (nan: none)."""
    pr, pc = (PAPER.get((paper_key, a, size)) for a in (BASELINE, PRIMARY))
    return math.nan if pr is None or pc is None else pc - pr


def negligible(paper_key: str | None, diff: float) -> bool:
    """Whether a difference is below the size that counts on this data set
    (:data:`NEGLIGIBLE`), whatever its p."""
    bound = NEGLIGIBLE.get(paper_key or "")
    return bound is not None and not math.isnan(diff) and abs(diff) < bound


@dataclass
class Spread:
    """Mean and sample standard deviation (ddof=1; nan for one value) of ``n`` values."""

    mean: float
    std: float
    n: int


def over_stacks(metrics: Sequence[Sequence[Mapping]], key: str = "val_mse"
                ) -> dict[int, Spread]:
    """Per layer, the final ``key`` (the last epoch's record) of each stack, as mean ± std.

    ``metrics`` holds one list of ``pretrain/metrics.jsonl`` records (``layer``, ``epoch``,
    ``key``) per stack, e.g. one stack per seed. A stack without a record for a layer is left
    out of that layer's spread.
    """
    finals: dict[int, list[float]] = {}
    for records in metrics:
        last: dict[int, Mapping] = {}
        for r in records:
            if key in r and ("layer" in r):
                k = int(r["layer"])
                if k not in last or r.get("epoch", 0) >= last[k].get("epoch", 0):
                    last[k] = r
        for k, r in last.items():
            finals.setdefault(k, []).append(float(r[key]))
    out = {}
    for k in sorted(finals):
        v = np.asarray(finals[k])
        var = _sample_var(v)
        out[k] = Spread(float(v.mean()), math.sqrt(var) if not math.isnan(var) else math.nan,
                        int(v.size))
    return out
