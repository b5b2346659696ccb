"""Writes a data set's split through a pretrained encoder as features with labels, for use in
other tools (scikit-learn, for example).

  python -m pipelines.encode --workdir=runs/mnist_quick --split=test --depth=2 --output=feats.npz

Reads the workdir's config.json and stack (a pretrain or compare workdir), loads the split of
the workdir's data source or of --source (there its whole split, unless --validation_size or
--test_size say otherwise), puts it through the input transform the stack was trained behind
(never fitted again on --source), encodes it through CAE layers 1..depth in bounded batches
and writes an .npz with ``features`` (N, H', W', maps), ``labels`` (N,), ``depth`` and
``pooled``. Writes nothing in the workdir.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from absl import flags

from pipelines import common
from scae import atomic
from scae import workdir as workdir_lib
from scae.data import sources
from scae.errors import InputError
from scae.study import pretrain as pretraining

_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"],
                           "Which split to encode: train, validation (the last "
                           "--validation_size training images) or test.")
_DEPTH = flags.DEFINE_integer("depth", None, "Encode through CAE layers 1..depth (default: all).")
_POOLED = flags.DEFINE_bool("pooled", True, "Max-pool the top layer's maps as the CNN does.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz file to write.")
_SOURCE = flags.DEFINE_string("source", None, "Another data source to encode (default: the "
                              "workdir's config.data.source), e.g. npz:/path/data.npz: its "
                              "whole train or test split, unless the sizes below say otherwise.")
# Another source's splits are its own, whole: the workdir's sizes fit the workdir's data.
_VALIDATION_SIZE = flags.DEFINE_integer(
    "validation_size", None, "The last N training images are validation, those before train "
    "(default: the workdir's config for its own source, 0 for --source).")
_TEST_SIZE = flags.DEFINE_integer(
    "test_size", None, "Encode the first N test images, 0 for all (default: as "
    "--validation_size).")
_BATCH = flags.DEFINE_integer("encode_batch", 500, "Images per encoding batch (bounds memory).")


def _check_flags() -> None:
    """What can be refused before the workdir is read."""
    if not _OUTPUT.value:
        raise InputError("--output: required, e.g. --output=features.npz")
    if _BATCH.value < 1:
        raise InputError(f"--encode_batch: expected an integer >= 1, got {_BATCH.value}")
    for flag in (_VALIDATION_SIZE, _TEST_SIZE):
        if flag.value is not None and flag.value < 0:
            raise InputError(f"--{flag.name}: expected an integer >= 0, got {flag.value}")


def split_images(config: ml_collections.ConfigDict, source: str, own: bool, split: str,
                 validation_size: int | None = None,
                 test_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw uint8 images, labels) of ``split`` ('train', 'validation' or 'test') of
    ``source``: for the workdir's ``own`` source the splits of its ``config`` (what it was
    trained and evaluated on), for another source its whole train or test split; unless
    ``validation_size`` (the last N training images) or ``test_size`` (the first N test
    images, 0 for all) are given."""
    data_dir = config.data.get("tfds_data_dir") or None
    if split == "test":
        test = sources.load(source, "test", data_dir=data_dir)
        # The workdir's own test split is the one its records were evaluated on.
        n = test_size if test_size is not None else (config.data.test_size if own else 0)
        n = min(n, len(test)) if n else len(test)
        return test.images[:n], test.labels[:n]
    train = sources.load(source, "train", data_dir=data_dir)
    if validation_size is None:  # the workdir's split of its own data; all of another's
        size, key = (config.data.validation_size, "config.data.validation_size") if own \
            else (0, "--validation_size")
    else:
        size, key = validation_size, "--validation_size"
    if not 0 <= size < len(train):
        raise InputError(f"{key}={size}: expected 0..{len(train) - 1} ({source} has "
                         f"{len(train)} training images)")
    if split == "validation" and size == 0:
        raise InputError(f"--split=validation: {source} has no validation split here; pass "
                         f"--validation_size=N to encode its last N training images (or "
                         f"--split=train for all of them)")
    cut = len(train) - size
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return train.images[part], train.labels[part]


def main(config, workdir: Path) -> None:
    _check_flags()
    # Before any work: an --output that cannot be written is one line, not a traceback after
    # the encoding.
    out = workdir_lib.check_output(_OUTPUT.value, "--output")
    workdir_lib.hold(workdir, write=False)  # no other command writes the stack while it is read
    atomic.sweep_beside(out)  # what a killed encode of this file left
    config = workdir_lib.load_config(workdir) if config is None else config
    # The stack with the transform it was trained behind: every source goes through that one,
    # so the same images give the same features whatever file they came in (a transform
    # fitted on --source's own training images would move them).
    s = pretraining.from_workdir(workdir, config, transform=True)
    depth = s.depth if _DEPTH.value is None else _DEPTH.value
    if not 1 <= depth <= s.depth:
        raise InputError(f"--depth={depth}: the stack in {workdir} has layers 1..{s.depth}")
    source = _SOURCE.value or config.data.source
    images, labels = split_images(config, source, not _SOURCE.value, _SPLIT.value,
                                  _VALIDATION_SIZE.value, _TEST_SIZE.value)
    expected = s.layers[0].spec.in_channels
    if images.shape[-1] != expected:
        raise InputError(f"{source}: images have {images.shape[-1]} channel(s), "
                         f"the stack in {workdir} expects {expected}")
    try:  # what the transform or the kernels cannot take fails here, cheaply, naming the data
        s.features(s.prepare(images[:1]), depth, _POOLED.value)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{source}: images of {tuple(images.shape[1:])} are too "
                         f"small for the stack's kernels and pools ({e})") from None
    feats = s.encode(images, depth, _POOLED.value, _BATCH.value)
    with atomic.replacing(out) as tmp, tmp.open("wb") as f:
        np.savez(f, features=feats, labels=np.asarray(labels), depth=depth,
                 pooled=_POOLED.value)
    common.log(f"wrote {out}: features {feats.shape} of the {_SPLIT.value} split of {source}, "
               f"depth {depth}{', pooled' if _POOLED.value else ''}, with {len(labels)} labels")


if __name__ == "__main__":
    common.run(main, needs_config=False)
