"""Summary statistics against scipy on hand-made run records."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from scae.report import stats

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


# Two-sided 95% quantiles of Student's t, t(0.975; df), from printed tables, so that the
# intervals below are checked without scipy.
T975 = {2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977987,
        9: 2.2621571627409915}


def paired_records(values: dict[tuple[int, str], dict[int, float]]) -> list[dict]:
    """Run records from {(size, arm): {seed: test error}}, in a scrambled order."""
    rows = [{"dataset": "mnist", "label_size": size, "arm": arm, "seed": seed, "test_error": v}
            for (size, arm), by_seed in values.items() for seed, v in by_seed.items()]
    return rows[::-1][1::2] + rows[::-1][0::2]


@pytest.mark.parametrize("a,b", [
    ([7.1, 7.4, 7.0, 7.3, 7.2], [7.9, 7.5, 8.1, 7.7, 7.6]),
    ([2.2, 2.3, 2.1], [2.3, 2.1, 2.2]),
    ([50.0, 52.5, 49.0, 51.0], [51.0, 52.0, 51.5, 50.0]),
    ([0.8, 0.82, 0.79, 0.85, 0.81, 0.8, 0.83, 0.78, 0.84, 0.8],
     [0.9, 0.88, 0.91, 0.86, 0.93, 0.9, 0.87, 0.92, 0.89, 0.95]),
])
def test_paired_interval_and_df_by_hand(a, b):
    d = np.subtract(a, b)
    n = d.size
    half = T975[n - 1] * d.std(ddof=1) / math.sqrt(n)
    (p,) = stats.paired_tests(paired_records({
        (1000, "pretrained"): dict(enumerate(a)), (1000, "random"): dict(enumerate(b))}))
    assert p.n == n and p.df == n - 1
    assert p.diff == pytest.approx(d.mean(), abs=1e-12)
    assert p.ci_low == pytest.approx(d.mean() - half, rel=1e-9, abs=1e-12)
    assert p.ci_high == pytest.approx(d.mean() + half, rel=1e-9, abs=1e-12)
    assert p.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(n)), rel=1e-9)
    # The paired interval is not the Welch one: pairing removes the between-seed spread.
    _, (w,) = stats.summarize(records({(1000, "random"): b, (1000, "pretrained"): a}))
    assert (w.ci_high - w.ci_low) != pytest.approx(p.ci_high - p.ci_low, rel=1e-3)


def test_paired_matches_scipy_and_pairs_by_seed():
    # Seeds listed in different orders per arm, and seed 7 only finished for pretrained: the
    # pairs must be matched by seed, not by position, and seed 7 left out.
    pre = {3: 7.0, 0: 7.1, 1: 7.4, 2: 7.3, 7: 1.0}
    rnd = {0: 7.9, 2: 8.1, 1: 7.5, 3: 7.6}
    fro = {2: 9.1, 0: 9.0, 1: 8.8, 3: 9.3}
    tests = stats.paired_tests(paired_records({(1000, "frozen"): fro, (1000, "random"): rnd,
                                               (1000, "pretrained"): pre}))
    assert [(t.arm_a, t.arm_b) for t in tests] == [("pretrained", "random"),
                                                   ("frozen", "random")]
    for t, arm in zip(tests, (pre, fro)):
        seeds = [0, 1, 2, 3]
        a, b = [arm[s] for s in seeds], [rnd[s] for s in seeds]
        ref = scipy.stats.ttest_rel(a, b)
        ci = ref.confidence_interval(0.95)
        assert t.seeds == seeds
        assert t.differences == pytest.approx(np.subtract(a, b).tolist())
        assert (t.t, t.p, t.df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue),
                                    ref.df)
        assert (t.ci_low, t.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert math.isnan(t.wilcoxon_p) and "4 non-zero pairs" in t.wilcoxon_reason
    assert tests[0].diff < 0 < tests[1].diff
    assert tests[0].significant


def test_wilcoxon_matches_scipy_and_drops_zero_differences():
    a = [7.1, 7.4, 7.0, 7.3, 7.2, 6.9, 7.5, 7.0]
    b = [7.9, 7.5, 8.1, 7.7, 7.6, 7.2, 7.5, 7.4]  # seed 6: a zero difference
    (t,) = stats.paired_tests(paired_records({(10, "pretrained"): dict(enumerate(a)),
                                              (10, "random"): dict(enumerate(b))}))
    d = np.subtract(a, b)
    ref = scipy.stats.wilcoxon(d[np.abs(d) > 1e-9])
    assert t.wilcoxon_p == pytest.approx(ref.pvalue)
    assert t.wilcoxon_reason == ""


@pytest.mark.parametrize("a,b,reason,wreason", [
    ([7.0], [8.0], "at least 2 seeds", "1 non-zero pair:"),
    ([7.0, 8.0, 9.0], [7.0, 8.0, 9.0], "same difference", "all differences zero"),
    # float32 noise on equal differences is not a spread, and is not a non-zero difference
    ([float(np.float32(5.57)), float(np.float32(6.57))], [5.0, 6.0], "same difference",
     "2 non-zero pairs"),
])
def test_degenerate_pairs_give_nan_with_a_reason(a, b, reason, wreason):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (t,) = stats.paired_tests(paired_records({(10, "pretrained"): dict(enumerate(a)),
                                                  (10, "random"): dict(enumerate(b))}))
    for x in (t.p, t.t, t.df, t.ci_low, t.ci_high, t.wilcoxon_p):
        assert math.isnan(x)
    assert reason in t.reason and wreason in t.wilcoxon_reason
    assert not t.significant


def test_no_pairs_without_common_seeds():
    (t,) = stats.paired_tests(paired_records({(10, "pretrained"): {0: 1.0, 1: 2.0},
                                              (10, "random"): {2: 1.0, 3: 2.0}}))
    assert t.n == 0 and math.isnan(t.diff) and "at least 2" in t.reason
    assert stats.paired_tests(paired_records({(10, "pretrained"): {0: 1.0}})) == []


def test_reconstruction_error_over_stacks():
    def stack(finals):
        return [{"layer": k, "epoch": e, "step": 10 * e, "val_mse": v + (2 - e)}
                for k, v in enumerate(finals, 1) for e in (1, 2)]
    got = stats.over_stacks([stack([0.5, 0.2]), stack([0.7, 0.4]), stack([0.6])])
    assert sorted(got) == [1, 2]
    assert (got[1].mean, got[1].n) == (pytest.approx(0.6), 3)
    assert got[1].std == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert (got[2].mean, got[2].n) == (pytest.approx(0.3), 2)
    one = stats.over_stacks([stack([0.5])])
    assert one[1].n == 1 and math.isnan(one[1].std)


def _t_cdf(x: float, df: float, steps: int = 20000) -> float:
    """Student's t cdf by Simpson's rule on its density (independent of scipy.stats)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda u: c * (1 + u * u / df) ** (-(df + 1) / 2)
    h = x / steps
    s = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + s * h / 3


def _t_quantile_975(df: float) -> float:
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < 0.975 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("a,b", [
    ([7.1, 7.4, 7.0, 7.3, 7.2], [7.9, 7.5, 8.1, 7.7, 7.6, 8.4]),
    ([2.2, 2.3, 2.1], [2.9, 2.1, 2.6, 3.3]),
    ([50.0, 52.5, 49.0, 51.0], [51.0, 58.0, 45.5, 50.0, 61.0]),
])
def test_welch_df_and_interval_by_hand(a, b):
    """Welch–Satterthwaite df and the 95% CI from their formulas, with the t quantile found by
    integrating the t density: no scipy on this side of the comparison."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t_quantile_975(df) * math.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    _, (w,) = stats.summarize(records({(1000, "random"): b, (1000, "pretrained"): a}))
    assert w.df == pytest.approx(df, rel=1e-9)
    assert w.diff == pytest.approx(diff, abs=1e-12)
    assert w.ci_low == pytest.approx(diff - half, rel=1e-6, abs=1e-9)
    assert w.ci_high == pytest.approx(diff + half, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Holm's adjustment over the primary tests


@pytest.mark.parametrize("p,expected", [
    # Sorted 0.01 < 0.02 < 0.04 of m = 3: 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04).
    ([0.04, 0.01, 0.02], [0.04, 0.03, 0.04]),
    # The CIFAR-10 table's primary tests (1k, 10k, 50k): 3 x 0.0367 = 0.1101, then
    # max(0.1101, 2 x 0.378) = 0.756 for both 10k and 50k (1 x 0.531 is smaller).
    ([0.0367, 0.378, 0.531], [0.1101, 0.756, 0.756]),
    # Capped at 1, and a step-down: 2 x 0.6 = 1.2 -> 1; the smaller one 3 x 0.001.
    ([0.6, 0.001, 0.7], [1.0, 0.003, 1.0]),
    # An undefined test stays undefined and does not count in m (m = 2 here).
    ([0.02, math.nan, 0.03], [0.04, math.nan, 0.04]),
    ([0.2], [0.2]),
    ([], []),
])
def test_holm_against_hand_computed_values(p, expected):
    got = stats.holm(p)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, rel=1e-12)


def test_paired_tests_adjust_the_primary_family_only():
    rnd = {s: 5.0 + s for s in range(5)}
    # 1k: a clear gain; 10k: a small, noisy one; the frozen arm is outside the family.
    pre1 = {s: v - 0.5 + 0.05 * (s % 2) for s, v in rnd.items()}
    pre10 = {s: v - 0.1 + 0.2 * (s % 3 == 0) for s, v in rnd.items()}
    fro = {s: v + 1.0 + 0.1 * s for s, v in rnd.items()}
    tests = stats.paired_tests(paired_records({
        (1000, "random"): rnd, (1000, "pretrained"): pre1, (1000, "frozen"): fro,
        (10000, "random"): rnd, (10000, "pretrained"): pre10}))
    primary = [t for t in tests if t.primary]
    assert [(t.label_size, t.arm_a) for t in primary] == [(1000, "pretrained"),
                                                        (10000, "pretrained")]
    assert [t.p_holm for t in primary] == pytest.approx(stats.holm([t.p for t in primary]))
    (frozen,) = [t for t in tests if t.arm_a == "frozen"]
    assert math.isnan(frozen.p_holm) and frozen.significant == (frozen.p < 0.05)
    # A primary test is significant by its adjusted p, not its raw one.
    for t in primary:
        assert t.significant == (t.p_holm < 0.05)


def test_a_raw_p_below_alpha_is_not_significant_once_adjusted():
    d = stats.PairedDifference(label_size=1000, arm_a="pretrained", arm_b="random",
                               seeds=[0, 1], differences=[-1.0, -0.8], diff=-0.9, ci_low=-1.7,
                               ci_high=-0.1, t=-9.0, df=1.0, p=0.0367, p_holm=0.110)
    assert not d.significant


def test_differences_in_test_images_paper_difference_and_negligible():
    assert stats.as_images(-0.06, 10000) == pytest.approx(-6.0)
    assert math.isnan(stats.as_images(-0.06, None))
    assert stats.paper_difference("cifar10", 1000) == pytest.approx(52.30 - 55.52)
    assert math.isnan(stats.paper_difference(None, 1000))
    assert stats.negligible("mnist", -0.06) and not stats.negligible("mnist", -0.1)
    assert not stats.negligible("cifar10", -0.06)  # no bound set for CIFAR-10
