"""Shared test helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The backend of the tests that call the library in this process, and of the commands they
# run: the CPU, whatever the machine has (a CUDA host's JAX would otherwise pick its GPU, where
# conv_impl and seed_batching 'auto' mean other things), unless SCAE_TEST_PLATFORMS asks for
# another (e.g. cuda, to check GPU determinism). Tests whose expectations hold on the CPU only
# carry the ``cpu_only`` marker and skip elsewhere. Read when JAX first starts a backend.
PLATFORMS = os.environ.get("SCAE_TEST_PLATFORMS", "cpu")
os.environ["JAX_PLATFORMS"] = PLATFORMS
if "jax" in sys.modules:  # imported before this file (by a plugin): its config read the old value
    sys.modules["jax"].config.update("jax_platforms", PLATFORMS)

# The suite compiles its programs at LLVM's -O1 instead of XLA's default -O2: they are many and
# each runs a few times, and -O1 about halves the compile time of the largest ones (the
# Winograd convolutions: tests/test_winograd.py alone 127 s at -O2, 71 s at -O1) for the same
# results (docs/performance.md, "The test suite"). Set the flag yourself to test at another
# level: XLA_FLAGS=--xla_backend_optimization_level=2 python -m pytest ...
# Read when JAX first starts a backend, and inherited by the commands the tests run.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                     "--xla_backend_optimization_level=1"]))


def two_layer_config(**pretrain):
    """The MNIST smoke config shrunk to a stack of two small CAEs (6 maps of 5x5, then 3x3),
    with the given ``pretrain`` fields: for tests of greedy pretraining."""
    import configs.mnist

    c = configs.mnist.get_config("smoke")
    c.model.features = (6, 6)
    c.model.kernel_sizes = (5, 3)
    c.model.pool_sizes = (2, 2)
    c.pretrain.layers = 2
    c.pretrain.epochs = (2, 1)
    c.pretrain.sparsity_pool = (2, 2)
    c.pretrain.steps_per_call = 3
    c.pretrain.checkpoint_every_steps = 3
    for k, v in pretrain.items():
        c.pretrain[k] = v
    return c


def write_npz(path: Path, num_train: int = 60, num_test: int = 20, shape: tuple[int, ...] = (4, 4),
              num_classes: int = 10, **overrides: np.ndarray) -> Path:
    """A tiny data set in the npz source format; image i's first two pixels encode i.

    Labels cycle through the classes. ``overrides`` replace or add arrays by name.
    """
    arrays = {}
    for split, n in (("train", num_train), ("test", num_test)):
        images = np.zeros((n, *shape), np.uint8)
        flat = images.reshape(n, -1)
        flat[:, 0], flat[:, 1] = np.arange(n) % 256, np.arange(n) // 256
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def pytest_runtest_setup(item):
    """``cpu_only`` tests skip where the in-process backend is not the CPU."""
    if item.get_closest_marker("cpu_only") is not None:
        import jax

        if jax.default_backend() != "cpu":
            pytest.skip(f"expects the CPU backend; this run uses {jax.default_backend()} "
                        f"(SCAE_TEST_PLATFORMS={PLATFORMS})")


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs (``slow``) first: xdist deals tests out in order, and a minute-long
    run dealt last keeps one worker busy while the other has nothing left."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def make_npz():
    """:func:`write_npz`, for tests that need their own variant."""
    return write_npz


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A 60-train / 20-test, 4x4 grayscale, 10-class npz file."""
    return write_npz(tmp_path / "tiny.npz")


@pytest.fixture(scope="session")
def tiny_npz_module(tmp_path_factory) -> Path:
    """200 training and 50 test digits of the embedded MNIST, as an npz source (28x28)."""
    from scae.data import sources as data

    train, test = data.load("mnist", "train"), data.load("mnist", "test")
    return write_npz(tmp_path_factory.mktemp("mnist") / "mnist_small.npz",
                     train_images=train.images[:200, ..., 0], train_labels=train.labels[:200],
                     test_images=test.images[:50, ..., 0], test_labels=test.labels[:50])


# Full copies of the data sets beside the project's folder (../shared/data), where development
# machines and CI keep them; a fresh clone elsewhere has none, and the tests that read them skip.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_FILES = {
    "mnist.npz": "the full MNIST (70,000 digits) as an npz file with train_images, train_labels, "
                 "test_images and test_labels",
    "cifar10-jpeg.tar.gz": "CIFAR-10 as an image-folder archive "
                           "cifar10-jpeg/{train,test}/<class>/<n>.jpg",
}


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``, or a skip that says what is missing and how to provide it."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs {SHARED_FILES.get(name, name)} at {path}; that folder exists on the "
                    f"project's development machines and CI, not in a fresh clone. Put the file "
                    f"there to run this test (README: 'Data sets on an offline machine').")
    return path


@pytest.fixture(scope="session", autouse=True)
def xla_cache(tmp_path_factory) -> Path:
    """The commands the tests run share one persistent compilation cache per test session, as
    a user's reruns do, instead of filling ~/.cache. (Shared by xdist's workers.)"""
    path = tmp_path_factory.getbasetemp().parent / "xla_cache"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    # The tests that call the library in this process use it too: the phases clear JAX's
    # in-memory caches when they end, and many tests compile the same small programs.
    from pipelines import common

    common.enable_compilation_cache()
    return path
