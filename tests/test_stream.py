"""Unlabelled images that stream from disk (scae.data.stream): reads by index, the streamed
pretraining equal to the in-memory one and resumable, config.data.unlabelled_source through
the inputs and the commands, and its bad input as one line and exit 2."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_bad_input as bad_input
from conftest import two_layer_config
from PIL import Image

import configs.mnist
from scae import atomic
from scae.data import inputs, stream
from scae.data.preprocess import Normalizer
from scae.errors import InputError
from scae.models import modules as models
from scae.study import pretrain as pretraining
from scae.train import checkpoint, driver

ROOT = Path(__file__).resolve().parents[1]
workdir = bad_input.workdir  # the fixture: a workdir that no refused command may touch


def _digits(n: int) -> np.ndarray:
    x = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"]
    return x[:n, ..., None]


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """192 embedded MNIST training digits as an npy file, and the same array."""
    x = _digits(192)
    path = tmp_path_factory.mktemp("stream") / "digits.npy"
    np.save(path, x)
    return path, x


def _quiet(_):
    pass


# --- reading by index -----------------------------------------------------------------------


def test_reads_any_indices_in_their_order(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 5, 4, 3), np.uint8)
    np.save(tmp_path / "x.npy", x)
    images = stream.ImageStream(tmp_path / "x.npy")
    assert len(images) == 50 and images.image_shape == (5, 4, 3)
    for idx in ([7], [3, 4, 5, 6], [49, 0, 0, 12, 13, 11, 49], np.arange(50)[::-1], []):
        np.testing.assert_array_equal(images.read(np.asarray(idx, np.int32)), x[idx])
    with pytest.raises(IndexError):
        images.read([50])


def test_three_dimensional_arrays_are_one_channel_and_digests_follow_content(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", x)
    a = stream.ImageStream(tmp_path / "a.npy")
    assert a.shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(a.read([1]), x[1:, ..., None])
    x[1, 2, 3] += 1
    np.save(tmp_path / "b.npy", x)
    assert a.digest() != stream.ImageStream(tmp_path / "b.npy").digest()
    assert a.digest() == stream.ImageStream(tmp_path / "a.npy").digest()


def _bad_npy(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.npy"
    if kind == "missing":
        return path, "no such file"
    if kind == "float":
        np.save(path, np.zeros((4, 5, 5, 1), np.float32))
        return path, "expected uint8 pixels, got dtype float32"
    if kind == "shape":
        np.save(path, np.zeros((4, 25), np.uint8))
        return path, "expected images of shape (N, H, W) or (N, H, W, C), got shape (4, 25)"
    if kind == "truncated":
        np.save(path, np.zeros((4, 5, 5, 1), np.uint8))
        path.write_bytes(path.read_bytes()[:-7])
        return path, "the file holds 93"
    if kind == "not_npy":
        path.write_bytes(b"PK\x03\x04 not a numpy file at all")
        return path, "not a readable .npy file"
    if kind == "folder":
        path.mkdir()
        return path, "found a folder"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing", "float", "shape", "truncated", "not_npy", "folder"])
def test_bad_npy_files_are_one_line_naming_the_file(tmp_path, kind):
    path, fragment = _bad_npy(tmp_path, kind)
    with pytest.raises(InputError) as e:
        stream.open_source(f"npy:{path}")
    assert str(path) in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


# --- pretraining from a stream --------------------------------------------------------------


def _stream(path: Path) -> stream.PretrainStream:
    return stream.PretrainStream(stream.ImageStream(path), Normalizer("unit"))


def _assert_params_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=rtol, atol=atol),
                 models.params_of(a), models.params_of(b))


def test_streamed_pretraining_equals_the_in_memory_one(tmp_path, digits_npy):
    path, x = digits_npy
    images = jnp.asarray(Normalizer("unit")(x))
    # Layer 2 re-encodes in memory too ('never'), as a stream must: the same computation.
    config = two_layer_config(epochs=(2, 1), cache_features="never")
    memory = pretraining.pretrain(config, images, images[:64], tmp_path / "memory", log=_quiet)
    streamed = pretraining.pretrain(config, _stream(path), images[:64], tmp_path / "stream",
                                    log=_quiet)
    _assert_params_close(memory, streamed)
    keys = ("layer", "epoch", "step")
    a = atomic.read_jsonl(tmp_path / "memory" / "pretrain" / "metrics.jsonl")
    b = atomic.read_jsonl(tmp_path / "stream" / "pretrain" / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    np.testing.assert_allclose([r["train_mse"] for r in a], [r["train_mse"] for r in b],
                               rtol=1e-5)


def test_stacks_of_several_seeds_stream_as_each_alone(tmp_path, digits_npy):
    """Seeds trained together read each chunk's images once (their union, padded to a fixed
    size): each seed's stack is still the one it trains alone."""
    path, x = digits_npy
    images = jnp.asarray(Normalizer("unit")(x))
    config = two_layer_config(epochs=(1, 1))
    config.pretrain.layers = 1
    together = pretraining.pretrain_seeds(config, _stream(path), images[:64],
                                          tmp_path / "together", [0, 1], log=_quiet)
    alone = pretraining.pretrain(config, images, images[:64], tmp_path / "alone", log=_quiet,
                                 seed_index=1)
    _assert_params_close(together[1], alone, rtol=1e-4, atol=1e-6)


def test_chunk_data_reads_each_example_once_and_lays_out_each_seeds_batches():
    read = []

    class Source:
        def read(self, indices):
            read.append(np.asarray(indices))
            return np.asarray(indices, np.float32)[:, None] * 10

    # Two seeds that both take image 9: each image is read once, in index order.
    order = np.array([[5, 3, 9, 1, 0, 2], [3, 8, 9, 7, 6, 4]], np.int32)
    data = driver.chunk_data(Source(), order, 2, 2, 1)
    np.testing.assert_array_equal(read[-1], [1, 7, 9])
    assert data.shape == (2, 2, 1, 1)  # seeds, steps, batch, the example's own shape
    np.testing.assert_array_equal(np.asarray(data)[..., 0],
                                  order[:, 2:4].reshape(2, 2, 1) * 10)
    # Images taken once each: read in the order of the batches, with nothing to gather.
    data = driver.chunk_data(Source(), order[:1], 0, 3, 2)
    np.testing.assert_array_equal(read[-1], order[0])
    np.testing.assert_array_equal(np.asarray(data)[..., 0], order[:1].reshape(1, 3, 2) * 10)


def test_a_killed_streamed_run_resumes_to_the_same_parameters(tmp_path, digits_npy,
                                                             monkeypatch):
    path, x = digits_npy
    val = jnp.asarray(Normalizer("unit")(x[:64]))
    config = two_layer_config()
    reference = pretraining.pretrain(config, _stream(path), val, tmp_path / "ref", log=_quiet)
    saves = []
    real_save = checkpoint.Checkpoints.save

    def save_then_die(self, step, state, record):
        real_save(self, step, state, record)
        saves.append(step)
        if len(saves) == 2:  # mid-layer 1
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain(config, _stream(path), val, tmp_path / "run", log=_quiet)
    monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
    logs = []
    resumed = pretraining.pretrain(config, _stream(path), val, tmp_path / "run",
                                   log=logs.append)
    assert any("resuming at step" in m for m in logs)
    _assert_params_close(reference, resumed, rtol=1e-6, atol=1e-7)


# --- config.data.unlabelled_source ----------------------------------------------------------


def _smoke(unlabelled: str, pretrain_size: int = 0):
    c = configs.mnist.get_config("smoke")
    c.data.unlabelled_source = unlabelled
    c.data.pretrain_size = pretrain_size
    return c


def test_inputs_pretrain_on_the_unlabelled_images(digits_npy):
    path, x = digits_npy
    labelled = inputs.build(_smoke("").data, 0)
    got = inputs.build(_smoke(f"npy:{path}").data, 0)
    assert isinstance(got.pretrain, stream.PretrainStream) and got.pretrain.shape == x.shape
    np.testing.assert_array_equal(got.pretrain.read(np.array([4, 2])),
                                  labelled.normalizer(x[[4, 2]]))
    assert got.fingerprint != labelled.fingerprint  # other pretraining images, other results
    np.testing.assert_array_equal(np.asarray(got.train_images),
                                  np.asarray(labelled.train_images))
    subset = inputs.build(_smoke(f"npy:{path}", pretrain_size=50).data, 0).pretrain
    assert len(subset) == 50 and len(set(subset.indices.tolist())) == 50


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")


def test_a_folder_of_images_is_decoded_once_and_streamed(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAE_CACHE_DIR", str(tmp_path / "cache"))
    x = _digits(12)
    _write_pngs(tmp_path / "pool" / "a", x[:7])  # subfolders are read too, in path order
    _write_pngs(tmp_path / "pool" / "b", x[7:])
    (tmp_path / "pool" / ".DS_Store").write_bytes(b"not data")
    images = stream.open_source(f"folder:{tmp_path / 'pool'}")
    np.testing.assert_array_equal(images.read(np.arange(12)), x)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    stream.open_source(f"folder:{tmp_path / 'pool'}")
    assert list((tmp_path / "cache").iterdir()) == cached  # not decoded again


# --- bad input through the commands: one line, exit 2 ---------------------------------------


def _folder_case(tmp_path: Path, kind: str) -> tuple[str, list[str]]:
    folder = tmp_path / "pool"
    _write_pngs(folder, _digits(3))
    if kind == "unreadable":
        (folder / "004.png").write_bytes(b"not a png")
        return f"folder:{folder}", [str(folder / "004.png"), "not a readable image"]
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(folder / "004.png")
    return f"folder:{folder}", [str(folder / "004.png"), "28x20 grayscale"]


@pytest.mark.parametrize("kind", ["missing", "float", "shape", "truncated", "channels",
                                  "unreadable", "image_size", "prefix"])
def test_bad_unlabelled_source_is_one_line_and_exit_2(capsys, tmp_path, workdir, monkeypatch,
                                                      kind):
    monkeypatch.setenv("SCAE_CACHE_DIR", str(tmp_path / "cache"))
    if kind in ("unreadable", "image_size"):
        source, fragments = _folder_case(tmp_path, kind)
    elif kind == "channels":
        np.save(tmp_path / "rgb.npy", np.zeros((300, 28, 28, 3), np.uint8))
        source = f"npy:{tmp_path / 'rgb.npy'}"
        fragments = [str(tmp_path / "rgb.npy"), "28x28 with 3 channels", "28x28 with 1 channel"]
    elif kind == "prefix":
        source, fragments = "zip:/x.zip", ["config.data.unlabelled_source", "npy:<file.npy>"]
    else:
        path, fragment = _bad_npy(tmp_path, kind)
        source, fragments = f"npy:{path}", [str(path), fragment]
    bad_input.assert_refused(capsys, workdir, [f"--config.data.unlabelled_source={source}"],
                             fragments, "pretrain")


@pytest.mark.heavy
@pytest.mark.slow
def test_pretrain_command_streams_and_refuses_as_a_process(tmp_path, digits_npy):
    path, _ = digits_npy
    run = lambda source, w: subprocess.run(
        [sys.executable, "-m", "pipelines.pretrain", bad_input.SMOKE,
         f"--config.data.unlabelled_source={source}", "--config.pretrain.layers=1",
         "--config.data.pretrain_size=100", f"--workdir={tmp_path / w}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    bad = run(f"npy:{tmp_path / 'none.npy'}", "bad")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none.npy'}: no such file"]
    good = run(f"npy:{path}", "good")
    assert good.returncode == 0, good.stderr[-2000:]
    assert "100 images of (28, 28, 1)" in good.stderr + good.stdout
