"""Every data source on tiny files made here, and every kind of bad input."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import pickle
import socket
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from scae.data import sources as data
from scae.errors import InputError

SHA256 = {
    "mnist.npz": "39b9b1ffaa0ba4d8995a616551f0966941fe02a3fe79ba4a9db7373db16d53ad",
    "cifar10-jpeg.tar.gz": "a9b417d49ece03275aaed3eda6397fb05543766d0cb8e04271acd5de448ff826",
}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decoded-tree caches go to a fresh folder, never to the user's ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SCAE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def bad(source: str, split: str, *fragments: str, **kwargs) -> str:
    """Loads and expects one InputError line containing every fragment."""
    with pytest.raises(InputError) as info:
        data.load(source, split, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def truncate(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def targz(folder: Path, out: Path, arcname: str | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return out


# --- source names ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["nope:x", "npz", "npz:", "imagenet", "tfds:"])
def test_unknown_source(source):
    bad(source, "train", repr(source), "expected")


def test_unknown_split(tiny_npz):
    bad(f"npz:{tiny_npz}", "validation", "'validation'", "train, test")


# --- npz ------------------------------------------------------------------------------------


def test_npz_adds_channel_and_names_classes(tiny_npz):
    train = data.load(f"npz:{tiny_npz}", "train")
    test = data.load(f"npz:{tiny_npz}", "test")
    assert train.images.shape == (60, 4, 4, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and list(train.labels[:11]) == [*range(10), 0]
    assert len(test) == 20
    assert train.class_names == tuple("0123456789")


def test_npz_rgb_and_class_names(tmp_path, make_npz):
    names = np.array(["cat", "dog", "emu"])
    path = make_npz(tmp_path / "c.npz", shape=(2, 3, 3), num_classes=3, class_names=names)
    split = data.load(f"npz:{path}", "test")
    assert split.images.shape == (20, 2, 3, 3)
    assert split.class_names == ("cat", "dog", "emu")


def test_npz_integral_floats_are_accepted(tmp_path, make_npz):
    images = np.full((60, 4, 4), 7.0)
    path = make_npz(tmp_path / "f.npz", train_images=images)
    assert data.load(f"npz:{path}", "train").images.max() == 7


def test_npz_missing_path(tmp_path):
    bad(f"npz:{tmp_path / 'absent.npz'}", "train", "absent.npz", "no such file")


def test_npz_empty_file(tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    bad(f"npz:{tmp_path / 'e.npz'}", "train", "e.npz", "empty file")


def test_npz_truncated(tiny_npz):
    truncate(tiny_npz)
    bad(f"npz:{tiny_npz}", "train", "tiny.npz", "not a readable .npz")


def test_npz_not_an_archive(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    bad(f"npz:{tmp_path / 'a.npy'}", "train", "a.npy", ".npz archive")
    (tmp_path / "t.npz").write_text("hello")
    bad(f"npz:{tmp_path / 't.npz'}", "train", "t.npz", "not an .npz archive", "zip signature")


def test_npz_missing_array(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    bad(f"npz:{tmp_path / 'm.npz'}", "train", "m.npz", "train_labels")


@pytest.mark.parametrize("shape", [(60, 16), (60, 2, 2, 2, 2), (60, 0, 4)])
def test_npz_wrong_image_rank(tmp_path, make_npz, shape):
    path = make_npz(tmp_path / "r.npz", train_images=np.zeros(shape, np.uint8))
    bad(f"npz:{path}", "train", "r.npz", "train_images", "(N, H, W)")


@pytest.mark.parametrize("images, fragment", [
    (np.full((60, 4, 4), 0.5), "non-integer"),
    (np.full((60, 4, 4), 300, np.int32), "0..255"),
    (np.full((60, 4, 4), -1, np.int16), "0..255"),
    (np.full((60, 4, 4), "x"), "dtype"),
])
def test_npz_non_uint8_values(tmp_path, make_npz, images, fragment):
    path = make_npz(tmp_path / "v.npz", train_images=images)
    bad(f"npz:{path}", "train", "v.npz", "train_images", fragment)


def test_npz_labels_out_of_range(tmp_path, make_npz):
    path = make_npz(tmp_path / "n.npz", train_labels=np.full(60, -1))
    bad(f"npz:{path}", "train", str(path), "labels must lie in", "-1")
    names = np.array(["a", "b"])
    path = make_npz(tmp_path / "o.npz", train_labels=np.full(60, 3), class_names=names)
    bad(f"npz:{path}", "train", str(path), "0..1", "3..3")


def test_npz_labels_wrong_shape_or_type(tmp_path, make_npz):
    path = make_npz(tmp_path / "s.npz", train_labels=np.zeros((60, 2), np.int64))
    bad(f"npz:{path}", "train", "s.npz", "train_labels", "(N,)")
    path = make_npz(tmp_path / "t.npz", train_labels=np.full(60, 0.5))
    bad(f"npz:{path}", "train", "t.npz", "integer labels")


def test_npz_count_mismatch(tmp_path, make_npz):
    path = make_npz(tmp_path / "c.npz", test_labels=np.zeros(19, np.uint8))
    bad(f"npz:{path}", "test", str(path), "20 images but 19 labels")


# --- MNIST IDX ------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, compress: bool, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (n, 5, 6), np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    for stem in ("train", "t10k"):
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            raw = idx_bytes(array, magic)
            name = f"{stem}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_idx(tmp_path, compress):
    images, labels = write_idx(tmp_path / "mnist", compress)
    for split in ("train", "test"):
        got = data.load(f"idx:{tmp_path / 'mnist'}", split)
        np.testing.assert_array_equal(got.images[..., 0], images)
        np.testing.assert_array_equal(got.labels, labels)
        assert got.class_names == tuple("0123456789")


def test_idx_missing_file(tmp_path):
    (tmp_path / "d").mkdir()
    bad(f"idx:{tmp_path / 'd'}", "train", str(tmp_path / "d"), "train-images-idx3-ubyte")
    bad(f"idx:{tmp_path / 'nowhere'}", "train", "nowhere", "no such file")


def test_idx_truncated_gzip(tmp_path):
    write_idx(tmp_path / "m", compress=True)
    truncate(tmp_path / "m" / "t10k-images-idx3-ubyte.gz")
    bad(f"idx:{tmp_path / 'm'}", "test", "t10k-images-idx3-ubyte.gz", "gzip")


def test_idx_wrong_magic(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    path = tmp_path / "m" / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03  # 2051: an images file where labels are expected
    path.write_bytes(bytes(raw))
    bad(f"idx:{tmp_path / 'm'}", "train", str(path), "magic number 2051", "expected 2049")


def test_idx_byte_count_mismatch(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    path = tmp_path / "m" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    bad(f"idx:{tmp_path / 'm'}", "train", str(path), "12x5x6 = 360 bytes", "found 353")
    path.write_bytes(b"\0\0\x08")
    bad(f"idx:{tmp_path / 'm'}", "train", str(path), "truncated IDX header")


def test_idx_empty_file(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(b"")
    bad(f"idx:{tmp_path / 'm'}", "train", "train-labels-idx1-ubyte", "empty file")


def test_idx_count_mismatch(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5), 2049))
    bad(f"idx:{tmp_path / 'm'}", "test", "12 images", "5 labels")


def test_idx_label_out_of_range(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(12, 10), 2049))
    bad(f"idx:{tmp_path / 'm'}", "test", "idx:", "labels must lie in 0..9")


# --- CIFAR-10 python batches ----------------------------------------------------------------

CLASSES = list(data.CIFAR10_CLASSES)


def cifar_batch(n: int, start: int) -> tuple[dict, np.ndarray]:
    """A batch in the original format, and the NHWC images it encodes."""
    images = np.random.default_rng(start).integers(0, 256, (n, 32, 32, 3), np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    labels = [(start + i) % 10 for i in range(n)]
    return {b"batch_label": b"x", b"data": rows, b"labels": labels}, images


def write_cifar(folder: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    train = []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch, images = cifar_batch(n, start=i * n)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        train.append(images)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(train[:5]), train[5]


def check_cifar(source: str, train: np.ndarray, test: np.ndarray) -> None:
    got = data.load(source, "train")
    np.testing.assert_array_equal(got.images, train)
    assert list(got.labels) == [i % 10 for i in range(15)]
    assert got.class_names == tuple(CLASSES)
    np.testing.assert_array_equal(data.load(source, "test").images, test)


def test_cifar_folder(tmp_path):
    train, test = write_cifar(tmp_path / "c" / "cifar-10-batches-py")
    check_cifar(f"cifar:{tmp_path / 'c'}", train, test)
    check_cifar(f"cifar:{tmp_path / 'c' / 'cifar-10-batches-py'}", train, test)


def test_cifar_tar(tmp_path):
    train, test = write_cifar(tmp_path / "cifar-10-batches-py")
    archive = targz(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    check_cifar(f"cifar:{archive}", train, test)


def test_cifar_truncated_tar(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", n=40)
    archive = truncate(targz(tmp_path / "cifar-10-batches-py", tmp_path / "c.tar.gz"), 0.6)
    bad(f"cifar:{archive}", "test", "c.tar.gz", "truncated tar")


def test_cifar_empty_or_foreign_tar(tmp_path):
    (tmp_path / "e.tar.gz").write_bytes(b"")
    bad(f"cifar:{tmp_path / 'e.tar.gz'}", "train", "e.tar.gz", "empty file")
    (tmp_path / "x.tar.gz").write_text("not a tar")
    bad(f"cifar:{tmp_path / 'x.tar.gz'}", "train", "x.tar.gz", "tar archive")


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    bad(f"cifar:{tmp_path / 'c'}", "train", str(tmp_path / "c"), "data_batch_3")


def test_cifar_wrong_shape(tmp_path):
    write_cifar(tmp_path / "c")
    batch = {b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(batch))
    bad(f"cifar:{tmp_path / 'c'}", "test", "test_batch", "(N, 3072)", "(3, 1024)")


def test_cifar_count_mismatch_and_range(tmp_path):
    write_cifar(tmp_path / "c")
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(batch))
    bad(f"cifar:{tmp_path / 'c'}", "test", "test_batch", "3 images but 2 labels")
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(batch))
    bad(f"cifar:{tmp_path / 'c'}", "test", "cifar:", "labels must lie in 0..9")


def test_cifar_corrupt_or_hostile_pickle(tmp_path):
    write_cifar(tmp_path / "c")
    truncate(tmp_path / "c" / "test_batch")
    bad(f"cifar:{tmp_path / 'c'}", "test", "test_batch", "not a readable")

    class Hostile:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "c" / "batches.meta").write_bytes(pickle.dumps({b"label_names": Hostile()}))
    bad(f"cifar:{tmp_path / 'c'}", "train", "batches.meta", "refusing to load builtins.print")


# --- image-folder trees ---------------------------------------------------------------------


def write_tree(root: Path, mode: str = "RGB", size: tuple[int, int] = (5, 4),
               per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog", "emu")) -> dict:
    """PNGs at root/<split>/<class>/<k>.png; returns {(split, class, k): pixels}."""
    rng = np.random.default_rng(1)
    pixels = {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                array = rng.integers(0, 256, shape, np.uint8)
                Image.fromarray(array, mode).save(root / split / c / f"{k:04d}.png")
                pixels[split, c, k] = array if mode == "RGB" else array[..., None]
    return pixels


def check_tree(split: data.Split, pixels: dict, name: str) -> None:
    """Every decoded image matches the file of its class."""
    assert len(split) == sum(1 for key in pixels if key[0] == name)
    by_class = {}
    for (s, c, _), array in pixels.items():
        if s == name:
            by_class.setdefault(c, []).append(array)
    for image, label in zip(split.images, split.labels):
        assert any(np.array_equal(image, a) for a in by_class[split.class_names[label]])


def test_folder_directory(tmp_path):
    pixels = write_tree(tmp_path / "tree")
    for split in ("train", "test"):
        got = data.load(f"folder:{tmp_path / 'tree'}", split)
        assert got.images.shape == (9, 4, 5, 3) and got.class_names == ("cat", "dog", "emu")
        check_tree(got, pixels, split)


def test_folder_grayscale_under_a_top_folder(tmp_path):
    pixels = write_tree(tmp_path / "outer" / "digits", mode="L")
    got = data.load(f"folder:{tmp_path / 'outer'}", "test")
    assert got.images.shape == (9, 4, 5, 1)
    check_tree(got, pixels, "test")


def test_folder_tar_matches_directory(tmp_path):
    pixels = write_tree(tmp_path / "cifar10-jpeg")
    archive = targz(tmp_path / "cifar10-jpeg", tmp_path / "t.tar.gz")
    from_tar = data.load(f"folder:{archive}", "train")
    from_dir = data.load(f"folder:{tmp_path / 'cifar10-jpeg'}", "train")
    np.testing.assert_array_equal(from_tar.images, from_dir.images)
    np.testing.assert_array_equal(from_tar.labels, from_dir.labels)
    check_tree(from_tar, pixels, "train")
    flat = targz(tmp_path / "cifar10-jpeg", tmp_path / "flat.tar.gz", arcname=".")
    np.testing.assert_array_equal(data.load(f"folder:{flat}", "train").images, from_dir.images)


def test_folder_classes_span_both_splits(tmp_path):
    write_tree(tmp_path / "t")
    for f in (tmp_path / "t" / "test" / "cat").iterdir():
        f.unlink()
    (tmp_path / "t" / "test" / "cat").rmdir()
    got = data.load(f"folder:{tmp_path / 't'}", "test")
    assert got.class_names == ("cat", "dog", "emu") and set(got.labels) == {1, 2}


def test_folder_ignores_hidden_and_outside_files(tmp_path):
    write_tree(tmp_path / "t")
    (tmp_path / "t" / "README.txt").write_text("about")
    (tmp_path / "t" / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    assert len(data.load(f"folder:{tmp_path / 't'}", "train")) == 9


def test_folder_non_image_file(tmp_path):
    write_tree(tmp_path / "t")
    (tmp_path / "t" / "train" / "dog" / "notes.txt").write_text("not an image")
    bad(f"folder:{tmp_path / 't'}", "train", "notes.txt", "not a readable image")
    archive = targz(tmp_path / "t", tmp_path / "t.tar.gz")
    bad(f"folder:{archive}", "train", "t.tar.gz:t/train/dog/notes.txt", "not a readable image")


def test_folder_file_at_wrong_depth(tmp_path):
    write_tree(tmp_path / "t")
    (tmp_path / "t" / "train" / "stray.png").write_bytes(b"x")
    bad(f"folder:{tmp_path / 't'}", "train", "stray.png", "<class>/<image>")


def test_folder_mixed_sizes_or_modes(tmp_path):
    write_tree(tmp_path / "t")
    odd = tmp_path / "t" / "train" / "emu" / "9999.png"
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(odd)
    bad(f"folder:{tmp_path / 't'}", "train", str(odd), "6x6 RGB", "expected 5x4 RGB")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(odd)
    bad(f"folder:{tmp_path / 't'}", "train", str(odd), "5x4 grayscale", "expected 5x4 RGB")
    Image.fromarray(np.zeros((4, 5, 4), np.uint8), "RGBA").save(odd)
    bad(f"folder:{tmp_path / 't'}", "train", str(odd), "mode RGBA")


def test_folder_truncated_tar_and_empty_split(tmp_path):
    write_tree(tmp_path / "t", per_class=20)
    archive = truncate(targz(tmp_path / "t", tmp_path / "t.tar.gz"), 0.5)
    bad(f"folder:{archive}", "test", "t.tar.gz", "truncated")
    (tmp_path / "e" / "train" / "a").mkdir(parents=True)
    bad(f"folder:{tmp_path / 'e'}", "test", str(tmp_path / "e"), "no images under test/")
    bad(f"folder:{tmp_path / 'none.tar.gz'}", "test", "none.tar.gz", "no such file")


def test_folder_cache_is_used_and_invalidated(tmp_path, cache_dir, monkeypatch):
    write_tree(tmp_path / "t")
    first = data.load(f"folder:{tmp_path / 't'}", "train")
    assert len(list(cache_dir.glob("*.npz"))) == 1
    decode = data._decode_image

    def no_decoding(*args):
        raise AssertionError("decoded despite the cache")
    monkeypatch.setattr(data, "_decode_image", no_decoding)
    again = data.load(f"folder:{tmp_path / 't'}", "train")
    np.testing.assert_array_equal(again.images, first.images)
    assert again.class_names == first.class_names

    # A changed file changes the key, so the tree is decoded again.
    black = Image.fromarray(np.zeros((4, 5, 3), np.uint8))
    black.save(tmp_path / "t" / "train" / "cat" / "0000.png")
    with pytest.raises(AssertionError, match="despite the cache"):
        data.load(f"folder:{tmp_path / 't'}", "train")
    monkeypatch.setattr(data, "_decode_image", decode)
    assert data.load(f"folder:{tmp_path / 't'}", "train").images.min() == 0


def test_folder_corrupt_cache_is_rebuilt(tmp_path, cache_dir):
    write_tree(tmp_path / "t")
    first = data.load(f"folder:{tmp_path / 't'}", "test")
    (cached,) = cache_dir.glob("*.npz")
    truncate(cached, 0.3)
    again = data.load(f"folder:{tmp_path / 't'}", "test")
    np.testing.assert_array_equal(again.images, first.images)
    assert np.load(cached)["images"].shape == first.images.shape
    assert not list(cache_dir.glob("*.tmp"))


# --- tfds and the bare names ----------------------------------------------------------------


def test_bare_mnist_falls_back_to_the_embedded_copy(tmp_path, no_network):
    got = data.load("mnist", "test", data_dir=str(tmp_path / "empty_tfds"))
    assert got.images.shape == (10000, 28, 28, 1) and got.images.dtype == np.uint8
    assert got.class_names == tuple("0123456789")
    assert np.bincount(got.labels).min() > 800


def test_a_data_dir_without_the_data_set_is_not_handed_to_tfds(tmp_path, monkeypatch):
    # Looked up on the file system first, so that a command's start does not import tfds.
    asked = []
    fake = type(sys)("tensorflow_datasets")
    fake.builder = lambda name, data_dir: asked.append((name, data_dir)) or 1 / 0
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert data._tfds_state("mnist", str(tmp_path)) == "absent"
    assert data._tfds_state("mnist", None) == "absent" and asked == []
    (tmp_path / "env" / "mnist").mkdir(parents=True)  # something there: tfds is asked
    assert data._tfds_state("mnist", None) == "absent" and asked == [("mnist", None)]


def test_bare_cifar10_without_tfds_says_what_to_pass(tmp_path, no_network):
    bad("cifar10", "train", "folder:", "cifar:", "tfds:cifar10", data_dir=str(tmp_path))


def test_tfds_mocked(tmp_path, no_network):
    tfds = pytest.importorskip("tensorflow_datasets", reason="needs tensorflow_datasets, which "
                               "the project installs (pip install -e .)")
    with tfds.testing.mock_data(num_examples=7):
        got = data.load("tfds:mnist", "train", data_dir=str(tmp_path))
    assert got.images.shape == (7, 28, 28, 1) and got.images.dtype == np.uint8
    assert got.labels.dtype == np.int32 and got.class_names == tuple("0123456789")


def test_tfds_not_prepared(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(data, "_can_prepare", lambda: False)
    bad("tfds:mnist", "test", "tfds:mnist", "not prepared", "tfds build mnist", "npz:",
        data_dir=str(tmp_path))
    bad("tfds:no_such_dataset_xyz", "test", "no tfds data set", data_dir=str(tmp_path))


# --- the shared copies (present on development machines and in CI only) ---------------------


@pytest.mark.parametrize("name", sorted(SHA256))
def test_shared_data_checksums(name):
    path = shared_data(name)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == SHA256[name]


def test_shared_mnist_npz():
    path = shared_data("mnist.npz")
    train, test = (data.load(f"npz:{path}", s) for s in ("train", "test"))
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    asset = importlib.resources.files("scae") / "assets" / "mnist.npz"
    embedded = data.load(f"npz:{asset}", "test")
    np.testing.assert_array_equal(embedded.images, test.images)


@pytest.mark.slow
def test_shared_cifar_jpeg_test_split():
    path = shared_data("cifar10-jpeg.tar.gz")
    test = data.load(f"folder:{path}", "test")
    assert test.images.shape == (10000, 32, 32, 3)
    assert test.class_names == data.CIFAR10_CLASSES
    assert list(np.bincount(test.labels)) == [1000] * 10


# --- hostile files: links, headers, bombs ---------------------------------------------------


def test_folder_tree_links(tmp_path):
    write_tree(tmp_path / "t")
    link = tmp_path / "t" / "train" / "cat" / "9999.png"
    link.symlink_to("nowhere.png")
    bad(f"folder:{tmp_path / 't'}", "train", str(link), "broken symbolic link")
    link.unlink()
    link.symlink_to(link.name)  # itself
    bad(f"folder:{tmp_path / 't'}", "train", str(link), "symbolic link loop")
    link.unlink()
    up = tmp_path / "t" / "train" / "cat" / "up"
    up.symlink_to("..")
    bad(f"folder:{tmp_path / 't'}", "train", str(up), "symbolic link loop")
    up.unlink()
    # A link to a real class folder is followed: its images count.
    (tmp_path / "t" / "train" / "gnu").symlink_to(tmp_path / "t" / "train" / "cat")
    got = data.load(f"folder:{tmp_path / 't'}", "train")
    assert len(got) == 12 and "gnu" in got.class_names


def _npz_with_header(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz whose train_images header declares ``shape`` but holds 16 bytes of data."""
    import io
    import zipfile

    def member(array_shape, payload):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": "|u1", "fortran_order": False, "shape": array_shape})
        return buf.getvalue() + payload

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train_images.npy", member(shape, bytes(16)))
        z.writestr("train_labels.npy", member((1,), bytes(1)))
        z.writestr("test_images.npy", member((1, 4, 4), bytes(16)))
        z.writestr("test_labels.npy", member((1,), bytes(1)))
    return path


def test_npz_header_declaring_a_huge_array(tmp_path):
    path = _npz_with_header(tmp_path / "h.npz", (10**6, 10**6, 10**3))
    bad(f"npz:{path}", "train", str(path), "train_images", "header declares", "holds only 16")
    ok = _npz_with_header(tmp_path / "ok.npz", (1, 4, 4))
    assert data.load(f"npz:{ok}", "train").images.shape == (1, 4, 4, 1)


def test_idx_dimensions_whose_product_overflows(tmp_path):
    write_idx(tmp_path / "m", compress=False)
    path = tmp_path / "m" / "train-images-idx3-ubyte"
    dims = (2**31, 2**31, 2**31)  # 2**93 bytes: int64 wraps around, Python ints do not
    path.write_bytes((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
                     + bytes(30))
    bad(f"idx:{tmp_path / 'm'}", "train", str(path), str(2**93), "found 30")


def test_compressed_files_that_expand_too_far_are_refused_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MIN_EXPANSION_LIMIT", 1 << 20)
    write_idx(tmp_path / "m", compress=True)
    bomb = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    zeros = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB: 1000x
    bomb.write_bytes(zeros)
    bad(f"idx:{tmp_path / 'm'}", "train", str(bomb), "expands beyond")
    # a tar.gz bomb stops at the limit, not after decompressing all of it
    big = tmp_path / "big"
    big.mkdir()
    (big / "data_batch_1").write_bytes(bytes(64 << 20))
    archive = targz(big, tmp_path / "bomb.tar.gz")
    assert archive.stat().st_size < (1 << 20)
    bad(f"cifar:{archive}", "train", str(archive), "expands beyond")
    # an npz member that expands the same way
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train_images.npy", bytes(64 << 20))
        z.writestr("train_labels.npy", bytes(10))
    bad(f"npz:{tmp_path / 'z.npz'}", "train", "train_images", "expands from")
