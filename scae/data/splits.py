"""Deterministic index sampling: the validation split, labelled subsets, the pretraining set.

Pure numpy; every function returns sorted int64 indices and depends only on its arguments.
"""

from __future__ import annotations

import numpy as np

from scae.errors import InputError

# Stream tags, so that the same seed drives independent draws for different purposes.
_LABELLED, _PRETRAIN = 1, 2


def validation_split(num_train: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): the validation set is the last ``validation_size``.

    This is MNIST's customary 50k/10k split of its official training order.
    """
    if not 0 <= validation_size < num_train:
        raise InputError(f"config.data.validation_size: expected 0..{num_train - 1} "
                         f"(the training split has {num_train} images), got {validation_size}")
    cut = num_train - validation_size
    return np.arange(cut), np.arange(cut, num_train)


def class_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """How many images of each class a ``size``-image subset takes.

    As balanced as the classes allow: ``size // K`` each with the remainder on the first classes;
    a class with too few images gives all it has and the rest is shared out the same way. The
    quotas only grow with ``size``, which makes subsets nested.
    """
    counts = np.asarray(counts, np.int64)
    # The largest level L with sum(min(counts, L)) <= size, by bisection.
    low, high = 0, int(counts.max(initial=0))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.minimum(counts, mid).sum() <= size else (low, mid - 1)
    quotas = np.minimum(counts, low)
    spare = size - int(quotas.sum())
    open_classes = np.flatnonzero(counts > low)[:spare]
    quotas[open_classes] += 1
    return quotas


def labelled_subset(labels: np.ndarray, size: int, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices into ``labels`` of a class-balanced, seeded, nested labelled subset.

    Each class is shuffled once by a permutation that depends only on ``seed`` and the class,
    and the subset takes a prefix of each: for a fixed seed the subset of a smaller size lies
    inside the subset of a larger one. Classes get :func:`class_quotas` images.
    """
    labels = np.asarray(labels)
    if size > len(labels):
        raise InputError(f"config.compare.label_sizes: a label size of {size} exceeds the "
                         f"{len(labels)} labelled training images (after the validation split)")
    if size < 0:
        raise InputError(f"config.compare.label_sizes: expected sizes >= 0, got {size}")
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    quotas = class_quotas(np.array([len(m) for m in members]), size)
    if quotas.sum() < size:
        raise InputError(f"config.compare.label_sizes: a label size of {size} exceeds the "
                         f"{int(quotas.sum())} training images with labels 0..{num_classes - 1}")
    chosen = [np.random.default_rng([seed, _LABELLED, c]).permutation(m)[:q]
              for c, (m, q) in enumerate(zip(members, quotas))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def pretrain_indices(num: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` of ``num`` images drawn without replacement (0 = all)."""
    if size == 0:
        return np.arange(num)
    if not 0 < size <= num:
        raise InputError(f"config.data.pretrain_size: expected 0 (all) or 1..{num}, got {size}")
    return np.sort(np.random.default_rng([seed, _PRETRAIN]).choice(num, size, replace=False))
