"""The public Python API: pretrain a CAE stack on arrays of images, fine-tune the CNN from it
(or from random initialisation), and load what the commands trained.

    import scae
    stack = scae.pretrain(images, preset="quick")      # raw images: uint8, or floats in [0, 1]
    feats = stack.encode(test_images, depth=2)          # the stack applies its input transform
    result = scae.finetune(train_x, train_y, val_x, val_y, stack=stack, arm="pretrained")

Configs are the commands' configs (:func:`make_config`); keyword overrides name a key with
``__`` between section and field, e.g. ``pretrain__epochs=(2, 1, 1)``. A stack carries the
input transform of its config (``data.scale``, ``data.standardize``, ``data.preprocess``,
fitted on the images it was trained on), so every function here takes raw images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
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
from scae import provenance
from scae import workdir as workdir_lib
from scae.data import inputs as inputs_lib
from scae.data import preprocess
from scae.data import sources as data_lib
from scae.errors import InputError
from scae.models import modules as models
from scae.models.stack import Stack
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining


def make_config(dataset: str = "mnist", preset: str = "quick",
                **overrides: Any) -> ml_collections.ConfigDict:
    """The config of ``dataset`` ('mnist' or 'cifar10', the paper's architecture for 28x28 or
    32x32 images) with a preset ('smoke', 'quick', 'paper'; 'quick' by default, as
    ``configs/<dataset>.py`` without one): exactly what ``configs/<dataset>.py:<preset>`` gives
    (one definition, :func:`scae.config.dataset_config`), with keyword overrides
    (``section__field=value``), validated. :func:`pretrain` and :func:`finetune` take the same
    ``preset`` default: the paper's protocol ('paper') takes hours on a CPU, so it is asked for
    by name."""
    return override(cfglib.dataset_config(dataset, preset), **overrides)


def override(config: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with ``section__field=value`` overrides."""
    c = cfglib.with_overrides(config, overrides, sep="__")
    cfglib.validate(c)
    return c


def prepare(images: np.ndarray, normalizer: preprocess.Normalizer | Stack | None = None,
            scale: str = "unit") -> np.ndarray:
    """Network inputs from raw images (uint8 NHWC pixels, or floats in [0, 1]; a 3-D array is a
    batch of grey images) through ``normalizer``: a transform, a stack's transform, or else the
    fixed ``scale`` ('unit' [0, 1] / 'symmetric' [-1, 1]). :meth:`Stack.encode` does this
    itself: give it the raw images."""
    if isinstance(normalizer, Stack):
        normalizer = normalizer.normalizer
    x = preprocess.as_batch(np.asarray(images))
    return (normalizer or preprocess.Normalizer(scale)).raw(x)


def pretrain(images: np.ndarray, config: ml_collections.ConfigDict | None = None, *,
             preset: str = "quick", dataset: str | None = None,
             val_images: np.ndarray | None = None, workdir: str | os.PathLike | None = None,
             log: Callable[[str], None] = print, **overrides: Any) -> Stack:
    """Greedy layer-wise pretraining of a CAE stack on raw ``images`` (uint8 NHWC, or floats
    in [0, 1]).

    ``config`` defaults to :func:`make_config` for ``dataset`` (from the image channels when
    not given) and ``preset``; ``overrides`` change single keys. The config's input transform
    (``data.scale``, ``data.standardize``, ``data.preprocess``) is fitted on the training
    images and carried by the returned stack, which then takes raw images too. The validation
    reconstruction error is measured on ``val_images``, or on the last ``pretrain.eval_size``
    images (at most a tenth), which are then not trained on. With a ``workdir`` the layers are
    checkpointed there and a rerun resumes; without one they train in a temporary folder.
    """
    _keywords(pretrain, overrides)
    x = preprocess.as_batch(np.asarray(images))
    if config is None:
        config = make_config(dataset or ("cifar10" if x.shape[-1] == 3 else "mnist"), preset)
    config = override(config, **overrides)
    cfglib.check_model_fits(config, x.shape[1:], None, "pretrain")
    if val_images is None:
        if x.shape[0] < 2:
            raise InputError(f"images: {x.shape[0]} image(s); pretraining needs at least 2 "
                             f"(one to train on, one held out for the validation error), or "
                             f"val_images")
        n_val = min(config.pretrain.eval_size, max(x.shape[0] // 10, 1))
        x, val = x[:-n_val], x[-n_val:]
    else:
        val = _images_like(val_images, x, "val_images")
    if not x.shape[0]:
        raise InputError("images: none; pretraining needs at least one image")
    d = config.data
    normalizer = preprocess.fit_normalizer(preprocess.as_pixels(x), d.scale, d.standardize,
                                           d.preprocess, d.zca_epsilon)
    with _folder(workdir) as folder, _claimed(config, folder, workdir, x, val):
        stack = pretraining.pretrain(config, jax.numpy.asarray(normalizer.raw(x)),
                                     jax.numpy.asarray(normalizer.raw(val)), folder, log=log)
        if workdir is not None:  # load_stack(workdir) then takes raw images as this stack does
            pretraining.write_transform(folder, normalizer)
    stack.normalizer = normalizer
    return stack


def _images_like(images: np.ndarray, like: np.ndarray, name: str) -> np.ndarray:
    """``images`` as a non-empty batch of the shape (H, W, C) of ``like``'s images, or one
    line saying why not."""
    x = preprocess.as_batch(np.asarray(images), like.shape[-1])
    if tuple(x.shape[1:]) != tuple(like.shape[1:]):
        raise InputError(f"{name}: images of {tuple(x.shape[1:])}, the training images are "
                         f"{tuple(like.shape[1:])}")
    if not x.shape[0]:
        raise InputError(f"{name}: no images; expected at least one")
    return x


@contextlib.contextmanager
def _claimed(config: ml_collections.ConfigDict, folder: Path,
             workdir: str | os.PathLike | None, *images: np.ndarray) -> Iterator[None]:
    """The commands' workdir rules for a caller's ``workdir``: a settings and data identity
    check (another config or other images are refused, naming what differs, instead of the
    old stack coming back) and the lock, for as long as the block runs. A temporary folder is
    the call's own and needs neither."""
    if workdir is None:
        yield
        return
    digest = workdir_lib.DataFingerprint(pretraining.API_DATA_NAME,
                                         provenance.data_digest(*images))
    with workdir_lib.claimed(config, folder, "pretrain", digest):
        yield


@contextlib.contextmanager
def _claimed_cell(config: ml_collections.ConfigDict, folder: Path,
                  workdir: str | os.PathLike | None, cell: str,
                  identity: dict[str, Any]) -> Iterator[None]:
    """The workdir rules of :func:`finetune` for a caller's ``workdir``: the lock, and a cell
    whose runs were made from another config, other arrays, another stack or other seeds
    refused (:func:`scae.workdir.claimed_cell`), never resumed as this call's."""
    if workdir is None:
        yield
        return
    with workdir_lib.claimed_cell(config, folder, cell, identity):
        yield


def _seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a non-empty list of distinct integers that a JAX random key holds, or one
    line saying why not."""
    if isinstance(seeds, (int, np.integer)) or not isinstance(seeds, Sequence):
        raise InputError(f"seeds {seeds!r}: expected a sequence of integers, e.g. (0, 1, 2)")
    out = list(seeds)
    bad = [s for s in out if isinstance(s, bool) or not isinstance(s, (int, np.integer))
           or not 0 <= s <= cfglib.MAX_SEED]
    if not out or bad:
        raise InputError(f"seeds {tuple(seeds)!r}: expected one or more integers in "
                         f"0..{cfglib.MAX_SEED} (a JAX random key holds 32 bits)")
    if len(set(out)) < len(out):
        raise InputError(f"seeds {tuple(seeds)!r}: a seed given twice would train the same "
                         f"run twice")
    return [int(s) for s in out]


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
             val_labels: np.ndarray, *, stack: Stack | str | os.PathLike | None = None,
             arm: str = "pretrained", test_images: np.ndarray | None = None,
             test_labels: np.ndarray | None = None, seeds: Sequence[int] = (0,),
             label_size: int | None = None, config: ml_collections.ConfigDict | None = None,
             preset: str = "quick", workdir: str | os.PathLike | None = None,
             log: Callable[[str], None] = print, **overrides: Any) -> FinetuneResult:
    """Fine-tunes the paper's CNN on labelled arrays: ``arm`` 'random' (random init),
    'pretrained' (conv layers from ``stack``, all trained) or 'frozen' (conv layers from
    ``stack``, kept fixed). Every seed trains in one program (``compare.seed_batching``) on
    a class-balanced subset of ``label_size`` labels (default: all), and keeps the parameters
    of its lowest validation error.

    ``stack`` is a :class:`Stack` or the path of a saved stack or a pretrain workdir
    (:func:`load_stack`). With a stack the CNN's conv layers are the stack's (maps, kernels,
    pools, activation) and the images go through the stack's input transform; the head
    (``model.fc_width``, ``model.num_classes``, dropout) and the training recipe come from
    the config. Without one the config's transform is fitted on the training images. Images
    are raw (uint8 NHWC, or floats in [0, 1]); labels integers 0..num_classes-1.
    """
    _keywords(finetune, overrides)
    if arm not in finetuning.ARMS:
        raise InputError(f"arm {arm!r}: expected one of {', '.join(finetuning.ARMS)}")
    if isinstance(stack, (str, os.PathLike)):
        stack = load_stack(stack)
    if stack is not None and not isinstance(stack, Stack):
        raise InputError(f"stack: expected a Stack or the path of one, got "
                         f"{type(stack).__name__}")
    if arm != "random" and stack is None:
        raise InputError(f"arm {arm!r} needs a stack (stack=...)")
    channels = stack.specs[0].in_channels if stack is not None and stack.depth else None
    x = preprocess.as_batch(np.asarray(train_images), channels)
    if config is None:
        config = make_config("cifar10" if x.shape[-1] == 3 else "mnist", preset)
    config = override(_stack_architecture(override(config, **overrides), stack))
    cfglib.check_model_fits(config, x.shape[1:], None, "compare")
    if stack is not None:
        to_inputs = stack.prepare
        normalizer = stack.normalizer or preprocess.Normalizer(config.data.scale)
    else:
        d = config.data
        normalizer = preprocess.fit_normalizer(preprocess.as_pixels(x), d.scale, d.standardize,
                                               d.preprocess, d.zca_epsilon)
        to_inputs = lambda im: normalizer.raw(preprocess.as_batch(np.asarray(im), x.shape[-1]))

    def images_of(name: str, im: np.ndarray) -> np.ndarray:
        out = to_inputs(im)
        if tuple(out.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(f"{name}: images of {tuple(out.shape[1:])}, the training images "
                             f"are {tuple(x.shape[1:])}")
        return out

    seeds = _seeds(seeds)
    n_classes = config.model.num_classes
    tx = images_of("train_images", x)
    y = _labels(train_labels, tx, "train_labels", n_classes)
    vx = images_of("val_images", val_images)
    vy = _labels(val_labels, vx, "val_labels", n_classes)
    if not len(y) or not len(vy):
        raise InputError(f"{'train' if not len(y) else 'val'}_images: no images; fine-tuning "
                         f"needs at least one labelled image to train on and one to validate")
    ex = images_of("test_images", test_images) if test_images is not None else vx[:0]
    ey = (_labels(test_labels, ex, "test_labels", n_classes)
          if test_images is not None else vy[:0])
    names = tuple(str(i) for i in range(n_classes))
    data = inputs_lib.Inputs(
        pretrain=tx, train_images=jax.numpy.asarray(tx), train_labels=y,
        val_images=jax.numpy.asarray(vx), val_labels=vy, test_images=jax.numpy.asarray(ex),
        test_labels=ey, class_names=names, normalizer=normalizer)
    size = len(y) if label_size is None else label_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
            or not 1 <= size <= len(y):
        raise InputError(f"label_size {size!r}: expected an integer in 1..{len(y)} (the "
                         f"training labels given)")
    size = int(size)
    cell = f"{size}_{arm}"
    # What a resumed cell must have been computed from, besides the config: the arrays as
    # the network sees them, the stack's parameters and the seeds.
    identity = {"data": provenance.data_digest(tx, y, vx, vy, ex, ey),
                "stack": None if stack is None else provenance.data_digest(
                    *jax.tree.leaves(models.params_of(stack))),
                "seeds": list(seeds)}
    with _folder(workdir) as folder, _claimed_cell(config, folder, workdir, cell, identity):
        rows, best = finetuning.run_cell(config, data, stack, size, arm, list(seeds),
                                         Path(folder) / "finetune" / cell, log)
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


def _keywords(fn: Callable, overrides: dict[str, Any]) -> None:
    """Refuses a keyword that is neither a parameter of ``fn`` nor a ``section__field`` config
    override but is close to a parameter (``lable_size``): the config would name it unknown."""
    params = [p for p in inspect.signature(fn).parameters if p not in ("overrides",)]
    for name in overrides:
        close = difflib.get_close_matches(name, params, n=1) if "__" not in name else []
        if close:
            raise InputError(f"{fn.__name__}(): no keyword {name!r}; did you mean {close[0]}? "
                             f"(config overrides are section__field=value)")


def _stack_architecture(config: ml_collections.ConfigDict,
                        stack: Stack | None) -> ml_collections.ConfigDict:
    """``config`` with the CNN's conv layers 1..depth of ``stack``: their maps, kernels and
    pools, and the stack's activation; deeper conv layers and the head stay the config's."""
    if stack is None or not stack.depth:
        return config
    specs, m, d = stack.specs, config.model, stack.depth
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.features = tuple(s.maps for s in specs) + tuple(m.features[d:])
    c.model.kernel_sizes = tuple(s.kernel for s in specs) + tuple(m.kernel_sizes[d:])
    c.model.pool_sizes = tuple(stack.pools[:d]) + tuple(m.pool_sizes[d:])
    c.model.activation = specs[0].activation
    c.pretrain.layers = min(c.pretrain.layers, len(c.model.features))
    return c


def load_data(source: str, split: str, data_dir: str | None = None) -> data_lib.Split:
    """A split ('train' or 'test') of a data source as uint8 NHWC ``images`` and integer
    ``labels`` (sources as ``config.data.source``: ``mnist``, ``cifar10``, ``npz:PATH``,
    ``idx:DIR``, ``cifar:PATH``, ``folder:PATH``, ``tfds:NAME``; ``mnist`` works offline)."""
    return data_lib.load(source, split, data_dir=data_dir)


# The published stacks: seed 0's stack of each paper preset, with its input transform
# (python -m pipelines.publish --stack), under the repository's results/.
PUBLISHED = {"mnist": "pretrained/mnist", "cifar10": "pretrained/cifar10"}
RESULTS = Path(__file__).resolve().parents[1] / "results"


def load_stack(path: str | os.PathLike) -> Stack:
    """A stack saved with :meth:`Stack.save`, the finished stack of a pretrain (or compare)
    workdir with its input transform fitted again from the workdir's config, or a published
    stack by name (``"mnist"``, ``"cifar10"``: the paper preset's, no training): any of them
    takes raw images."""
    path = Path(path)
    if not path.exists() and str(path) in PUBLISHED:
        published = RESULTS / PUBLISHED[str(path)]
        if not (published / "stack.json").is_file():
            raise InputError(f"published stack {str(path)!r}: not in {published}; it ships "
                             f"with the repository's results/ (a clone, not a wheel)")
        return Stack.load(published)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; expected a stack saved with Stack.save, "
                         f"a pretrain workdir or a published stack's name "
                         f"({', '.join(PUBLISHED)})"
                         + "".join(f"; did you mean {name!r}?" for name in
                                   difflib.get_close_matches(str(path), PUBLISHED, n=1)))
    if (path / "config.json").exists() and not (path / "stack.json").exists():
        return pretraining.from_workdir(path, transform=True)
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
