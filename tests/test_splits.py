"""Validation split, labelled subsets and the pretraining draw."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scae.data import splits
from scae.errors import InputError

LABELS = np.random.default_rng(0).permutation(np.arange(50000) % 10)


def test_validation_split_is_the_tail():
    train, val = splits.validation_split(60000, 10000)
    np.testing.assert_array_equal(train, np.arange(50000))
    np.testing.assert_array_equal(val, np.arange(50000, 60000))
    train, val = splits.validation_split(5, 0)
    assert len(train) == 5 and len(val) == 0


@pytest.mark.parametrize("size", [100, 101, -1])
def test_validation_split_too_large(size):
    with pytest.raises(InputError, match="config.data.validation_size"):
        splits.validation_split(100, size)


def test_labelled_subset_is_balanced_and_sorted():
    for size, per_class in ((1000, 100), (10000, 1000)):
        subset = splits.labelled_subset(LABELS, size, seed=0, num_classes=10)
        assert len(subset) == size and np.all(np.diff(subset) > 0)
        assert list(np.bincount(LABELS[subset], minlength=10)) == [per_class] * 10
    subset = splits.labelled_subset(LABELS, 1003, seed=0, num_classes=10)
    assert list(np.bincount(LABELS[subset])) == [101] * 3 + [100] * 7


def test_labelled_subset_is_seeded():
    a = splits.labelled_subset(LABELS, 1000, seed=3, num_classes=10)
    np.testing.assert_array_equal(a, splits.labelled_subset(LABELS, 1000, seed=3, num_classes=10))
    assert not np.array_equal(a, splits.labelled_subset(LABELS, 1000, seed=4, num_classes=10))


def test_labelled_subsets_are_nested():
    small = splits.labelled_subset(LABELS, 1000, seed=1, num_classes=10)
    large = splits.labelled_subset(LABELS, 10000, seed=1, num_classes=10)
    assert np.isin(small, large).all()


def test_full_size_takes_every_image_of_unbalanced_classes():
    labels = np.repeat(np.arange(3), [5, 50, 45])
    np.testing.assert_array_equal(splits.labelled_subset(labels, 100, 0, 3), np.arange(100))
    # Class 0 runs out at 5; the others share what it cannot give.
    assert list(np.bincount(labels[splits.labelled_subset(labels, 60, 0, 3)])) == [5, 28, 27]


def test_labelled_subset_too_large():
    with pytest.raises(InputError, match="config.compare.label_sizes.*60001.*50000"):
        splits.labelled_subset(LABELS, 60001, seed=0, num_classes=10)
    labels = np.array([0, 1, 2, 7])  # label 7 lies outside num_classes, so it can't be used
    with pytest.raises(InputError, match="config.compare.label_sizes"):
        splits.labelled_subset(labels, 4, seed=0, num_classes=3)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6),
       sizes=st.tuples(st.integers(0, 200), st.integers(0, 200)),
       seed=st.integers(0, 2**32 - 1), shuffle=st.integers(0, 1000))
def test_labelled_subset_properties(counts, sizes, seed, shuffle):
    labels = np.random.default_rng(shuffle).permutation(np.repeat(np.arange(len(counts)), counts))
    small, large = sorted(min(s, len(labels)) for s in sizes)
    a = splits.labelled_subset(labels, small, seed, len(counts))
    b = splits.labelled_subset(labels, large, seed, len(counts))
    for subset, size in ((a, small), (b, large)):
        assert len(subset) == size == len(np.unique(subset))
        assert np.all(np.diff(subset) > 0) and np.all((subset >= 0) & (subset < len(labels)))
        taken = np.bincount(labels[subset], minlength=len(counts))
        # Balanced: a class has two images fewer than another only when it has no more.
        short = taken[:, None] < taken[None, :] - 1
        assert np.all(~short | (taken == np.array(counts))[:, None])
    assert np.isin(a, b).all()


def test_pretrain_indices():
    np.testing.assert_array_equal(splits.pretrain_indices(7, 0, seed=0), np.arange(7))
    a = splits.pretrain_indices(1000, 100, seed=0)
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    np.testing.assert_array_equal(a, splits.pretrain_indices(1000, 100, seed=0))
    assert not np.array_equal(a, splits.pretrain_indices(1000, 100, seed=1))
    with pytest.raises(InputError, match="config.data.pretrain_size"):
        splits.pretrain_indices(10, 11, seed=0)
