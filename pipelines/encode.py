"""Writes a data set's split through a pretrained encoder as features with labels, for use in
other tools (scikit-learn, for example).

  python -m pipelines.encode --workdir=runs/mnist_quick --split=test --depth=2 --output=feats.npz

Reads the workdir's config.json and stack (a pretrain or compare workdir), loads the split of
the workdir's data source (or of --source, preprocessed as the stack was trained), encodes it
through CAE layers 1..depth in bounded batches and writes an .npz with ``features``
(N, H', W', maps), ``labels`` (N,), ``depth`` and ``pooled``. Splits: ``train`` (the
non-validation training images), ``validation``, ``test``. Writes nothing in the workdir.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags

from pipelines import common
from scae import atomic
from scae import workdir as workdir_lib
from scae.data import inputs
from scae.errors import InputError
from scae.study import pretrain as pretraining

_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"],
                           "Which split to encode.")
_DEPTH = flags.DEFINE_integer("depth", None, "Encode through CAE layers 1..depth (default: all).")
_POOLED = flags.DEFINE_bool("pooled", True, "Max-pool the top layer's maps as the CNN does.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz file to write.")
_SOURCE = flags.DEFINE_string("source", None, "Another data source to encode (default: the "
                              "workdir's config.data.source), e.g. npz:/path/data.npz.")
_BATCH = flags.DEFINE_integer("encode_batch", 500, "Images per encoding batch (bounds memory).")


def main(config, workdir: Path) -> None:
    if not _OUTPUT.value:
        raise InputError("--output: required, e.g. --output=features.npz")
    if _BATCH.value < 1:
        raise InputError(f"--encode_batch: expected an integer >= 1, got {_BATCH.value}")
    # Before any work: an --output that cannot be written is one line, not a traceback after
    # the encoding.
    out = workdir_lib.check_output(_OUTPUT.value, "--output")
    workdir_lib.hold(workdir, write=False)  # no other command writes the stack while it is read
    atomic.sweep_beside(out)  # what a killed encode of this file left
    config = workdir_lib.load_config(workdir) if config is None else config
    s = pretraining.from_workdir(workdir, config)
    depth = s.depth if _DEPTH.value is None else _DEPTH.value
    if not 1 <= depth <= s.depth:
        raise InputError(f"--depth={depth}: the stack in {workdir} has layers 1..{s.depth}")
    if _SOURCE.value:
        config.data.source = _SOURCE.value
    data = inputs.build(config.data, config.seed)
    images, labels = {"train": (data.train_images, data.train_labels),
                      "validation": (data.val_images, data.val_labels),
                      "test": (data.test_images, data.test_labels)}[_SPLIT.value]
    expected = s.layers[0].spec.in_channels
    if images.shape[-1] != expected:
        raise InputError(f"{config.data.source}: images have {images.shape[-1]} channel(s), "
                         f"the stack in {workdir} expects {expected}")
    try:
        s.features(images[:1], depth, _POOLED.value)  # too small an image fails here, cheaply
    except (ValueError, TypeError) as e:
        raise InputError(f"{config.data.source}: images of {tuple(images.shape[1:])} are too "
                         f"small for the stack's kernels and pools ({e})") from None
    feats = s.encode(images, depth, _POOLED.value, _BATCH.value)
    with atomic.replacing(out) as tmp, tmp.open("wb") as f:
        np.savez(f, features=feats, labels=np.asarray(labels), depth=depth,
                 pooled=_POOLED.value)
    common.log(f"wrote {out}: features {feats.shape} of the {_SPLIT.value} split, depth {depth}"
               f"{', pooled' if _POOLED.value else ''}, with {len(labels)} labels")


if __name__ == "__main__":
    common.run(main, needs_config=False)
