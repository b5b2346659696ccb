"""Validation split, labelled subsets and the pretraining draw."""

from __future__ import annotations

from pathlib import Path

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


# --- a training split in class order -----------------------------------------------------------


def test_a_class_sorted_tail_is_refused_naming_the_source_and_the_missing_classes():
    """The last validation_size images of a class-sorted file are one class: without the
    check they became a one-class validation set (and a pool lacking that class), silently."""
    labels = np.sort(np.arange(6000) % 10)
    with pytest.raises(InputError) as e:
        splits.check_classes(labels, 1000, "npz:/d/sorted.npz", tuple("0123456789"))
    line = str(e.value)
    assert "\n" not in line and line.startswith("npz:/d/sorted.npz: ")
    assert "validation split" in line and "classes 0, 1, 2, 3, 4, 5, 6, 7;" in line
    assert "labelled pool" in line and line.count("class 9") == 1  # the tail took every 9
    assert "shuffle" in line and "folder:" in line
    # Which images are validation does not change: only the refusal is new.
    np.testing.assert_array_equal(splits.validation_split(6000, 1000)[1], np.arange(5000, 6000))


def test_a_sorted_tail_names_classes_by_name_where_they_say_more():
    names = ("airplane", "automobile", "bird")
    labels = np.repeat(np.arange(3), 100)
    with pytest.raises(InputError, match=r"classes 0 \(airplane\), 1 \(automobile\)"):
        splits.check_classes(labels, 100, "cifar:/d", names)


def test_the_embedded_mnist_and_the_presets_pass():
    labels = np.load(Path(splits.__file__).parents[1] / "assets" / "mnist.npz")["train_labels"]
    for size in (0, 200, 1000, 5000, 10000):  # smoke, quick, cifar and paper validation sizes
        splits.check_classes(labels, size, "mnist", tuple("0123456789"))


@pytest.mark.parametrize("size", [5, 10, 30, 100, 1000])
def test_shuffled_labels_are_never_refused(size):
    """A small validation set of a shuffled file may lack a class by chance: that passes."""
    rng = np.random.default_rng(size)
    for _ in range(200):
        splits.check_classes(rng.permutation(np.arange(2000) % 10), size, "npz:x", ())


def test_a_file_with_fewer_classes_than_names_passes():
    """Classes the training split does not have are not asked of its parts."""
    splits.check_classes(np.arange(300) % 3, 100, "npz:x", tuple("0123456789"))
    splits.check_classes(np.zeros(300, np.int64), 100, "npz:x", ())


def test_inputs_build_refuses_a_class_sorted_file(tmp_path):
    from conftest import write_npz

    from scae import config
    from scae.data import inputs

    labels = np.sort(np.arange(300) % 10).astype(np.uint8)
    path = write_npz(tmp_path / "sorted.npz", num_train=300, train_labels=labels)
    c = config.base_config("mnist").data
    c.source, c.validation_size, c.pretrain_size = f"npz:{path}", 60, 0
    with pytest.raises(InputError, match=f"npz:{path}: the training images look sorted"):
        inputs.build(c, seed=0)
    c.source = f"npz:{write_npz(tmp_path / 'cycled.npz', num_train=300)}"
    assert len(inputs.build(c, seed=0).val_labels) == 60
