"""Summary statistics of the comparison: per-cell means over seeds and Welch tests between arms.

All errors are test errors in percent. A difference is ``mean(arm) - mean(random)``, so a
negative difference means the arm beats random initialisation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

# Display and sort order of the arms; unknown arms follow in name order.
ARMS = ("random", "pretrained", "frozen")
BASELINE = "random"
ALPHA = 0.05

# Masci et al. (2011), test error in percent, as recorded in docs/paper.md. 'pretrained' is the
# paper's "CAE stack" row.
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
            half = float(scipy.stats.t.ppf(0.5 + confidence / 2, df)) * se
            ci_low, ci_high = diff - half, diff + half
            # scipy warns about precision loss when one sample is constant, yet the Welch
            # statistic is well defined as long as the other one has spread.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = scipy.stats.ttest_ind(a.values, b.values, equal_var=False)
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
