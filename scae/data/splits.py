"""Deterministic index sampling: the validation split, labelled subsets, the pretraining set.

Pure numpy; every function returns sorted int64 indices and depends only on its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scae.errors import InputError

# Stream tags, so that the same seed drives independent draws for different purposes.
_LABELLED, _PRETRAIN = 1, 2
# A part of the training split that lacks classes is refused when a random order of the same
# labels would leave those classes out with a probability below this: then the file is in an
# order (sorted by class), not unlucky. Small enough that shuffled data are never refused in
# practice (below 1e-6 over every set of 10 classes a part could lack), large enough that a
# class-sorted file is refused even for a tail of a few dozen images.
SORTED_ODDS = 1e-9


def validation_split(num_train: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): the validation set is the last ``validation_size``.

    This is MNIST's customary 50k/10k split of its official training order.
    """
    if not 0 <= validation_size < num_train:
        raise InputError(f"config.data.validation_size: expected 0..{num_train - 1} "
                         f"(the training split has {num_train} images), got {validation_size}")
    cut = num_train - validation_size
    return np.arange(cut), np.arange(cut, num_train)


def check_classes(labels: np.ndarray, validation_size: int, source: str,
                  class_names: Sequence[str] = ()) -> None:
    """Raises :class:`InputError` when the validation split (the last ``validation_size`` of
    the training ``labels``) or the labelled pool (the images before it) lacks classes that the
    training split has, where a random order would almost surely hold them
    (:data:`SORTED_ODDS`): a file sorted by class, whose tail is one class.

    Which images :func:`validation_split` takes stays as it is (recorded results depend on
    it); a file in such an order is refused instead of giving a one-class validation set and a
    pool no labelled subset can balance. A small part that lacks a class by chance, as a
    shuffled file's may, passes."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < validation_size < n:
        return
    cut = n - validation_size
    counts = np.bincount(labels, minlength=len(class_names))
    parts = [(f"the validation split (the last {validation_size} training images, "
               f"config.data.validation_size={validation_size})", labels[cut:]),
             (f"the labelled pool (the first {cut} training images)", labels[:cut])]
    lacking = []
    for part, part_labels in parts:
        held = np.bincount(part_labels, minlength=len(counts)) > 0
        missing = np.flatnonzero((counts > 0) & ~held)
        if missing.size and _odds_of_lacking(n, int(counts[missing].sum()),
                                             len(part_labels)) < SORTED_ODDS:
            lacking.append(f"{part} has no image of class{'es' if missing.size > 1 else ''} "
                           f"{_class_list(missing, class_names)}")
    if lacking:
        raise InputError(f"{source}: the training images look sorted by class: "
                         f"{'; '.join(lacking)}, though the training split has them; shuffle "
                         f"the file's training images and labels together (a folder: source "
                         f"is shuffled as it is read)")


def _odds_of_lacking(total: int, members: int, size: int) -> float:
    """The probability that ``size`` of ``total`` images drawn at random hold none of
    ``members`` given ones: C(total - members, size) / C(total, size)."""
    if total - members < size:
        return 0.0

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return math.exp(log_comb(total - members, size) - log_comb(total, size))


def _class_list(classes: np.ndarray, names: Sequence[str], shown: int = 10) -> str:
    """'3 (cat), 5 (dog)': classes by label, with their names where those say more."""
    def one(c: int) -> str:
        name = names[c] if c < len(names) else ""
        return f"{c} ({name})" if name and name != str(c) else str(c)

    listed = ", ".join(one(int(c)) for c in classes[:shown])
    return listed + (f" and {len(classes) - shown} more" if len(classes) > shown else "")


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
