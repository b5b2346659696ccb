"""Summary statistics against scipy on hand-made run records."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from scae import stats

RANDOM = [7.9, 7.5, 8.1, 7.7, 7.6]
PRETRAINED = [7.1, 7.4, 7.0, 7.3]


def records(values: dict[tuple[int, str], list[float]], dataset: str = "mnist") -> list[dict]:
    """Minimal run records: one per value, seeds counting from 0 within each cell."""
    return [{"dataset": dataset, "label_size": size, "arm": arm, "seed": i, "test_error": v,
             "val_error": v, "epochs": 3, "steps": 30, "best_epoch": 2, "time_s": 1.0,
             "curve": [[1, v + 1], [2, v], [3, v + 0.5]]}
            for (size, arm), vs in values.items() for i, v in enumerate(vs)]


def welch_ci(a, b, conf=0.95):
    """The Welch–Satterthwaite interval, written out independently of the module."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = scipy.stats.t.ppf((1 + conf) / 2, df) * math.sqrt(va + vb)
    d = a.mean() - b.mean()
    return d - half, d + half


def test_cells_and_difference_match_scipy():
    cells, diffs = stats.summarize(records({(1000, "random"): RANDOM,
                                            (1000, "pretrained"): PRETRAINED}))
    assert [(c.label_size, c.arm, c.n) for c in cells] == [(1000, "random", 5),
                                                           (1000, "pretrained", 4)]
    for c, vs in zip(cells, (RANDOM, PRETRAINED)):
        assert c.mean == pytest.approx(np.mean(vs))
        assert c.std == pytest.approx(np.std(vs, ddof=1))
        assert c.values == vs
        assert c.seeds == list(range(len(vs)))
    (d,) = diffs
    ref = scipy.stats.ttest_ind(PRETRAINED, RANDOM, equal_var=False)
    assert (d.arm_a, d.arm_b, d.n_a, d.n_b) == ("pretrained", "random", 4, 5)
    assert d.diff == pytest.approx(np.mean(PRETRAINED) - np.mean(RANDOM))
    assert d.diff < 0  # pretrained has lower error here: negative means pretraining helps
    assert d.t == pytest.approx(ref.statistic)
    assert d.p == pytest.approx(ref.pvalue)
    lo, hi = welch_ci(PRETRAINED, RANDOM)
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert d.significant == (ref.pvalue < 0.05)
    assert d.significant  # these two samples are clearly apart


def test_frozen_difference_and_sign_when_pretraining_hurts():
    cells, diffs = stats.summarize(records({(100, "frozen"): [9.0, 9.5, 9.2],
                                            (100, "pretrained"): [8.5, 8.7, 8.6],
                                            (100, "random"): [8.0, 8.2, 8.1]}))
    assert [c.arm for c in cells] == ["random", "pretrained", "frozen"]
    by_arm = {d.arm_a: d for d in diffs}
    assert set(by_arm) == {"pretrained", "frozen"}
    assert all(d.arm_b == "random" for d in diffs)
    assert by_arm["pretrained"].diff == pytest.approx(0.5)
    assert by_arm["frozen"].diff == pytest.approx(9.2333333 - 8.1)
    assert by_arm["pretrained"].ci_low > 0


def test_no_difference_without_random():
    _, diffs = stats.summarize(records({(1000, "pretrained"): [1.0, 2.0],
                                        (10000, "random"): [1.0, 2.0]}))
    assert diffs == []


@pytest.mark.parametrize("a,b", [([7.0], [8.0, 8.5]), ([7.0], [8.0]),
                                 ([1.1, 1.1, 1.1], [2.2, 2.2])])
def test_degenerate_cells_give_nan_without_warnings(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells, (d,) = stats.summarize(records({(1000, "random"): b, (1000, "pretrained"): a}))
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b))
    for x in (d.p, d.t, d.ci_low, d.ci_high):
        assert math.isnan(x)
    assert not d.significant
    if len(a) == 1:
        assert math.isnan(cells[1].std)
    else:
        assert cells[1].std == 0.0


def test_mixed_datasets_are_refused():
    rows = records({(1000, "random"): [1.0]}) + records({(1000, "random"): [2.0]}, "cifar10")
    with pytest.raises(ValueError, match="several data sets"):
        stats.summarize(rows)


def test_paper_has_the_twelve_figures():
    assert len(stats.PAPER) == 12
    for ds in ("mnist", "cifar10"):
        for arm in ("random", "pretrained"):
            for size in (1000, 10000, 50000):
                assert (ds, arm, size) in stats.PAPER
    assert stats.PAPER["mnist", "random", 1000] == 7.63
    assert stats.PAPER["cifar10", "pretrained", 1000] == 52.30
    # The CAE stack beats random everywhere in the paper.
    for ds in ("mnist", "cifar10"):
        for size in (1000, 10000, 50000):
            assert stats.PAPER[ds, "pretrained", size] < stats.PAPER[ds, "random", size]


# Test errors as a run reports them: percentages of a test set, here to 0.01.
PERCENT = st.integers(0, 10000).map(lambda k: k / 100)


@settings(max_examples=40, deadline=None)
@given(st.lists(PERCENT, min_size=2, max_size=8), st.lists(PERCENT, min_size=2, max_size=8))
def test_welch_matches_scipy_on_any_samples(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, (d,) = stats.summarize(records({(10, "random"): b, (10, "pretrained"): a}))
    if len(set(a)) == 1 and len(set(b)) == 1:
        assert math.isnan(d.p)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on a constant sample
        ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    assert d.t == pytest.approx(ref.statistic, rel=1e-6)
    assert d.ci_low <= d.diff <= d.ci_high
