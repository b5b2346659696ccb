"""The public Python API: pretrain a CAE stack on arrays of images, fine-tune the CNN from it
(or from random initialisation), and load what the commands trained.

    import scae
    stack = scae.pretrain(images, preset="quick")               # uint8 or float NHWC
    feats = stack.encode(scae.prepare(test_images, stack), depth=2)
    result = scae.finetune(train_x, train_y, val_x, val_y, stack=stack, arm="pretrained")

Configs are the commands' configs (:func:`make_config`); keyword overrides name a key with
``__`` between section and field, e.g. ``pretrain__epochs=(2, 1, 1)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from scae import config as cfglib
from scae.data import inputs as inputs_lib
from scae.data import preprocess
from scae.data import sources as data_lib
from scae.errors import InputError
from scae.models import modules as models
from scae.models.stack import Stack
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining


def make_config(dataset: str = "mnist", preset: str = "paper",
                **overrides: Any) -> ml_collections.ConfigDict:
    """The config of ``dataset`` ('mnist' or 'cifar10', the paper's architecture for 28x28 or
    32x32 images) with a preset ('smoke', 'quick', 'paper'): exactly what
    ``configs/<dataset>.py:<preset>`` gives (one definition, :func:`scae.config.dataset_config`),
    with keyword overrides (``section__field=value``), validated."""
    return override(cfglib.dataset_config(dataset, preset), **overrides)


def override(config: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with ``section__field=value`` overrides."""
    c = cfglib.with_overrides(config, overrides, sep="__")
    cfglib.validate(c)
    return c


def prepare(images: np.ndarray, normalizer: preprocess.Normalizer | Stack | None = None,
            scale: str = "unit") -> np.ndarray:
    """Network inputs from images: uint8 NHWC pixels are scaled by ``normalizer`` (or a
    stack's, or ``scale``: 'unit' [0, 1] / 'symmetric' [-1, 1]); float images pass as they
    are. A 3-D array of grey images gets its channel axis."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InputError(f"images of shape {x.shape}: expected (N, H, W, C) or (N, H, W)")
    if x.dtype == np.uint8:
        if isinstance(normalizer, Stack):
            normalizer = getattr(normalizer, "normalizer", None)
        return (normalizer or preprocess.Normalizer(scale))(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"images of dtype {x.dtype}: expected uint8 pixels or floats")
    return x.astype(np.float32, copy=False)


def pretrain(images: np.ndarray, config: ml_collections.ConfigDict | None = None, *,
             preset: str = "paper", dataset: str | None = None,
             val_images: np.ndarray | None = None, workdir: str | os.PathLike | None = None,
             log: Callable[[str], None] = print, **overrides: Any) -> Stack:
    """Greedy layer-wise pretraining of a CAE stack on ``images`` (uint8 or float NHWC).

    ``config`` defaults to :func:`make_config` for ``dataset`` (from the image size when not
    given) and ``preset``; ``overrides`` change single keys. The validation reconstruction
    error is measured on ``val_images``, or on the last ``pretrain.eval_size`` images (at most
    a tenth), which are then not trained on. With a ``workdir`` the layers are checkpointed
    there and a rerun resumes; without one they train in a temporary folder.
    """
    x = prepare(images)
    if config is None:
        dataset = dataset or ("cifar10" if x.shape[-1] == 3 else "mnist")
        config = make_config(dataset, preset)
    config = override(config, **overrides)
    if val_images is None:
        n_val = min(config.pretrain.eval_size, max(x.shape[0] // 10, 1))
        x, val = x[:-n_val], x[-n_val:]
    else:
        val = prepare(val_images)
    normalizer = preprocess.Normalizer(config.data.scale) if np.asarray(images).dtype == np.uint8 \
        else None
    with _folder(workdir) as folder:
        stack = pretraining.pretrain(config, jax.numpy.asarray(x), jax.numpy.asarray(val), folder,
                                   log=log)
    stack.normalizer = normalizer
    return stack


@dataclasses.dataclass
class FinetuneResult:
    """The fine-tuned CNN of each seed (the parameters of lowest validation error) and one
    record per seed: val_error, test_error (percent; None without test data), best_epoch,
    the validation curve, lr_scale and more (see :func:`scae.study.finetune.run_cell`)."""

    models: list[models.CNN]
    records: list[dict]

    @property
    def model(self) -> models.CNN:
        """The first seed's model."""
        return self.models[0]


def finetune(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
             val_labels: np.ndarray, *, stack: Stack | None = None, arm: str = "pretrained",
             test_images: np.ndarray | None = None, test_labels: np.ndarray | None = None,
             seeds: Sequence[int] = (0,), label_size: int | None = None,
             config: ml_collections.ConfigDict | None = None, preset: str = "paper",
             workdir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
             **overrides: Any) -> FinetuneResult:
    """Fine-tunes the paper's CNN on labelled arrays: ``arm`` 'random' (random init),
    'pretrained' (conv layers from ``stack``, all trained) or 'frozen' (conv layers from
    ``stack``, kept fixed). Every seed trains in one program (``compare.seed_batching``) on
    a class-balanced subset of ``label_size`` labels (default: all), and keeps the parameters
    of its lowest validation error. Images are uint8 or float NHWC; labels integers
    0..num_classes-1."""
    x = prepare(train_images, stack)
    if config is None:
        config = make_config("cifar10" if x.shape[-1] == 3 else "mnist", preset)
    config = override(config, **overrides)
    if arm not in cfglib.ARMS:
        raise InputError(f"arm {arm!r}: expected one of {', '.join(cfglib.ARMS)}")
    if arm != "random" and stack is None:
        raise InputError(f"arm {arm!r} needs a stack (stack=...)")
    y = _labels(train_labels, x, "train_labels", config.model.num_classes)
    vx = prepare(val_images, stack)
    vy = _labels(val_labels, vx, "val_labels", config.model.num_classes)
    tx = prepare(test_images, stack) if test_images is not None else vx[:0]
    ty = (_labels(test_labels, tx, "test_labels", config.model.num_classes)
          if test_images is not None else vy[:0])
    names = tuple(str(i) for i in range(config.model.num_classes))
    data = inputs_lib.Inputs(
        pretrain=x, train_images=jax.numpy.asarray(x), train_labels=y,
        val_images=jax.numpy.asarray(vx), val_labels=vy, test_images=jax.numpy.asarray(tx),
        test_labels=ty, class_names=names, normalizer=preprocess.Normalizer(config.data.scale))
    size = len(y) if label_size is None else label_size
    with _folder(workdir) as folder:
        rows, best = finetuning.run_cell(config, data, stack, size, arm, list(seeds),
                                           Path(folder) / "finetune" / f"{size}_{arm}", log)
    spec = models.CNNSpec.from_config(config.model, data.image_shape)
    nets = []
    for i in range(len(seeds)):
        net = models.CNN(spec, rngs=nnx.Rngs(0))
        nnx.update(net, jax.tree.map(lambda a: np.asarray(a[i]), best))
        nets.append(net)
    if test_images is None:
        for r in rows:
            r["test_error"] = None
    return FinetuneResult(nets, rows)


def load_data(source: str, split: str, data_dir: str | None = None) -> data_lib.Split:
    """A split ('train' or 'test') of a data source as uint8 NHWC ``images`` and integer
    ``labels`` (sources as ``config.data.source``: ``mnist``, ``cifar10``, ``npz:PATH``,
    ``idx:DIR``, ``cifar:PATH``, ``folder:PATH``, ``tfds:NAME``; ``mnist`` works offline)."""
    return data_lib.load(source, split, data_dir=data_dir)


def load_stack(path: str | os.PathLike) -> Stack:
    """A stack saved with :meth:`Stack.save`, or the finished stack of a pretrain workdir."""
    path = Path(path)
    if (path / "config.json").exists() and not (path / "stack.json").exists():
        return pretraining.from_workdir(path)
    return Stack.load(path)


def _labels(labels, images: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (images.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{name}: expected {images.shape[0]} integer labels, got "
                         f"{y.dtype} of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{name}: labels must lie in 0..{num_classes - 1} "
                         f"(config.model.num_classes), got {y.min()}..{y.max()}")
    return y.astype(np.int32)


@contextlib.contextmanager
def _folder(workdir: str | os.PathLike | None) -> Iterator[Path]:
    """The given folder, or a temporary one removed afterwards."""
    if workdir is not None:
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="scae-") as tmp:
        yield Path(tmp)
