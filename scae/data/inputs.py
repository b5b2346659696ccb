"""What one experiment trains and evaluates on, built from a config's ``data`` section."""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scae import config as cfglib
from scae import provenance
from scae.data import sources as data
from scae.data import splits, stream
from scae.data.preprocess import Normalizer, fit_normalizer
from scae.errors import InputError


@dataclasses.dataclass
class Inputs:
    """Normalised float32 NHWC images on device, with numpy int32 labels.

    ``train_images`` are the non-validation training images (the pool labelled subsets are
    drawn from); ``pretrain`` is the unlabelled set for the CAEs, drawn from that same pool, or
    with ``data.unlabelled_source`` images with no labels that stream from disk
    (:class:`scae.data.stream.PretrainStream`).
    """

    pretrain: jax.Array | stream.PretrainStream
    train_images: jax.Array
    train_labels: np.ndarray
    val_images: jax.Array
    val_labels: np.ndarray
    test_images: jax.Array
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    normalizer: Normalizer
    # What the test split is, by content: names it in tables and figures and decides whether
    # the paper's figures are shown beside ours.
    identity: provenance.DataIdentity | None = None
    # A hash of the loaded train and test splits (provenance.data_digest): a workdir records
    # it, so that other data at the same path is refused, not silently reused.
    fingerprint: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _load_both(c: ml_collections.ConfigDict) -> tuple[data.Split, data.Split]:
    data_dir = c.tfds_data_dir or None
    train = data.load(c.source, "train", data_dir=data_dir)
    test = data.load(c.source, "test", data_dir=data_dir)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise InputError(f"{c.source}: train images are {train.images.shape[1:]} but test images "
                         f"are {test.images.shape[1:]}; expected the same (H, W, C)")
    if train.class_names != test.class_names:
        raise InputError(f"{c.source}: train and test splits have different class names "
                         f"({', '.join(train.class_names)} vs {', '.join(test.class_names)})")
    return train, test


def build(data_config: ml_collections.ConfigDict, seed: int) -> Inputs:
    """Loads ``data_config.source``, carves the validation set and normalises everything.

    The normaliser's statistics come from the non-validation training images only; the
    pretraining set is ``pretrain_size`` of them (0 = all, seeded), or of the images of
    ``unlabelled_source`` when one is given (:func:`unlabelled`); the test split is cut to its
    first ``test_size`` images when that is > 0.
    """
    c = data_config
    # The unlabelled images are opened and hashed first, so that a bad file is reported before
    # the labelled data are loaded and preprocessed.
    source = c.get("unlabelled_source", "")
    images = stream.open_source(source) if source else None
    images_digest = images.digest() if images is not None else ""
    train, test = _load_both(c)
    train_idx, val_idx = splits.validation_split(len(train), c.validation_size)
    # A class-sorted file's tail is one class: refused before anything is fitted or trained.
    splits.check_classes(train.labels, c.validation_size, c.source, train.class_names)
    pool = train.images[: len(train_idx)]  # validation is the tail, so the pool is a view
    normalizer = _fit(c, pool)
    train_images = jnp.asarray(normalizer(pool))
    fingerprint = provenance.data_digest(train.images, train.labels, test.images, test.labels)
    if images is not None:
        pretrain = unlabelled(c, images, train.images.shape[1:], normalizer, seed)
        # Other unlabelled images make other stacks: the workdir's data check sees them too.
        fingerprint = hashlib.blake2b(f"{fingerprint}+{images_digest}".encode(),
                                      digest_size=16).hexdigest()
    elif c.pretrain_size:
        chosen = splits.pretrain_indices(len(pool), c.pretrain_size, seed)
        pretrain = jnp.asarray(normalizer(pool[chosen]))
    else:
        pretrain = train_images  # the same images: share the device buffer
    test_n = min(c.test_size, len(test)) if c.test_size else len(test)
    return Inputs(
        pretrain=pretrain,
        train_images=train_images,
        train_labels=train.labels[train_idx],
        val_images=jnp.asarray(normalizer(train.images[val_idx])),
        val_labels=train.labels[val_idx],
        test_images=jnp.asarray(normalizer(test.images[:test_n])),
        test_labels=test.labels[:test_n],
        class_names=train.class_names,
        normalizer=normalizer,
        identity=provenance.identify(c.source, test.images[:test_n], test.labels[:test_n]),
        fingerprint=fingerprint,
    )


def unlabelled(c: ml_collections.ConfigDict, images: stream.ImageStream,
               image_shape: tuple[int, ...], normalizer: Normalizer,
               seed: int) -> stream.PretrainStream:
    """The pretraining images ``images`` (of ``c.unlabelled_source``), streamed from disk:
    ``pretrain_size`` of them (0 = all, seeded), each chunk through ``normalizer``.

    The transform is the labelled data's, fitted on the labelled training images: the stack
    carries it into fine-tuning, so the CAEs must see their inputs the way the CNN will see
    the labelled ones, and no statistic is taken of the stream. Images of another (H, W, C)
    than ``image_shape`` (the labelled data's) are refused."""
    if images.image_shape != tuple(image_shape):
        raise InputError(f"{images.where}: images of {_hwc(images.image_shape)}, but the "
                         f"labelled data ({c.source}) are {_hwc(image_shape)}; expected the "
                         f"same height, width and channels")
    chosen = (splits.pretrain_indices(len(images), c.pretrain_size, seed) if c.pretrain_size
              else None)
    return stream.PretrainStream(images, normalizer, chosen)


def _hwc(shape) -> str:
    h, w, ch = shape
    return f"{h}x{w} with {ch} channel{'s' if ch != 1 else ''}"


def _fit(c: ml_collections.ConfigDict, pool: np.ndarray) -> Normalizer:
    # Workdir configs from before these keys existed mean no GCN/ZCA.
    return fit_normalizer(pool, c.scale, c.standardize, c.get("preprocess", "none"),
                          c.get("zca_epsilon", 0.1))


def fit_transform(data_config: ml_collections.ConfigDict) -> Normalizer:
    """The input transform :func:`build` fits for ``data_config``, without building the
    splits; the training split is read only when a statistic needs it."""
    c = data_config
    if not c.standardize and c.get("preprocess", "none") == "none":
        return Normalizer(c.scale)
    train = data.load(c.source, "train", data_dir=c.tfds_data_dir or None)
    train_idx, _ = splits.validation_split(len(train), c.validation_size)
    return _fit(c, train.images[: len(train_idx)])


def labelled(inputs: Inputs, size: int, seed: int) -> np.ndarray:
    """Sorted indices into ``inputs.train_images`` of the seeded, class-balanced labelled subset."""
    return splits.labelled_subset(inputs.train_labels, size, seed, len(inputs.class_names))


def check_for(config: ml_collections.ConfigDict, inputs: Inputs, command: str) -> None:
    """Raises :class:`InputError` if ``inputs`` cannot go through ``config``'s model for
    ``command``: images too small for the kernels and pools, an unsupported channel count,
    more classes than the model outputs (see :func:`scae.config.check_model_fits`). The
    commands call it right after :func:`build`, before the workdir is touched. Fine-tuning
    (``compare``) also needs two classes among the training labels."""
    cfglib.check_model_fits(config, inputs.image_shape, inputs.num_classes, command)
    if command == "compare":
        check_classes_present(config.data.source, inputs.train_labels)


def check_classes_present(source: str, labels: np.ndarray) -> None:
    """Raises :class:`InputError` unless ``labels`` (the training labels of ``source``) hold
    at least two classes: a classifier of one class learns nothing a comparison could show."""
    present = np.unique(np.asarray(labels))
    if len(present) < 2:
        raise InputError(f"{source}: every training image has label "
                         f"{present[0] if len(present) else 'none'}; fine-tuning a classifier "
                         f"needs at least 2 classes")
