"""Readers for every data source: each gives uint8 images (N, H, W, C) and int32 labels.

Sources (see :func:`load`): ``tfds:<name>``, ``npz:<path>``, ``idx:<dir>``, ``cifar:<path>``,
``folder:<path>``, and the bare names ``mnist`` / ``cifar10``; and for images with no labels,
:func:`decoded_folder` (streamed by :mod:`scae.data.stream`). Anything wrong with a file ends
in one :class:`~scae.errors.InputError` line that names the file and what was expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
import io
import logging
import math
import os
import pickle
import re
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from scae import atomic
from scae.errors import InputError

SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# Errors that a damaged or foreign file can raise while being read or decoded.
_FILE_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, zipfile.BadZipFile,
                zlib.error, tarfile.TarError, pickle.UnpicklingError, Image.DecompressionBombError)
_ALTERNATIVES = ("pass data.source=npz:<file.npz>, idx:<dir>, "
                 "cifar:<dir or cifar-10-python.tar.gz> or folder:<dir or .tar.gz>")
_CACHE_VERSION = 1
# A compressed file may expand to at most this many times its size (or MIN_EXPANSION_LIMIT
# bytes, whichever is more). Real image data sets compress 2-10x; a file that expands 1000x
# is a decompression bomb, refused while streaming instead of exhausting the memory.
MAX_EXPANSION = 100
MIN_EXPANSION_LIMIT = 256 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set, in memory."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load(source: str, split: str, *, data_dir: str | None = None) -> Split:
    """Reads ``split`` ('train' or 'test') of ``source``.

    ``source`` is one of ``tfds:<name>``, ``npz:<path>``, ``idx:<dir>``, ``cifar:<path>``,
    ``folder:<path>``, ``mnist`` or ``cifar10``; ``data_dir`` is the tfds data dir (None: tfds's
    default). Raises :class:`InputError` for an unknown source or split and for any bad file.
    """
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if not isinstance(source, str):
        raise InputError(f"data source {source!r}: expected a string")
    prefix, sep, rest = source.partition(":")
    if not sep and source in ("mnist", "cifar10"):
        result = _read_named(source, split, data_dir)
    elif sep and prefix == "tfds" and rest:
        result = _read_tfds(rest, split, data_dir)
    elif sep and prefix in _FILE_READERS and rest:
        result = _FILE_READERS[prefix](Path(rest).expanduser(), split)
    else:
        raise InputError(f"data source {source!r}: expected mnist, cifar10, tfds:<name>, "
                         "npz:<path>, idx:<dir>, cifar:<path> or folder:<path>")
    return _checked(result, f"{source} ({split})")


# --- checks shared by every reader ---------------------------------------------------------


def _one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one short line."""
    text = re.sub(r"\s+", " ", str(error) or type(error).__name__).strip()
    return text if len(text) <= 200 else text[:197] + "..."


def _integral(array: np.ndarray) -> bool:
    """Whether every value is a whole number (always so for integer dtypes)."""
    if array.dtype.kind in "iu":
        return True
    return array.dtype.kind == "f" and bool(np.all(np.isfinite(array) & (array == np.round(array))))


def _as_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as uint8, if every value is an integer in 0..255."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    kind = array.dtype.kind
    if kind not in "iuf":
        raise InputError(f"{where}: expected uint8 pixel values, got dtype {array.dtype}")
    if array.size:
        if not _integral(array):
            raise InputError(f"{where}: expected uint8 pixel values (integers 0..255), "
                             f"got non-integer {array.dtype} values")
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise InputError(f"{where}: expected uint8 pixel values (0..255), got {low}..{high}")
    return array.astype(np.uint8)


def _as_labels(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as int32 of shape (N,); (N, 1) is flattened."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InputError(f"{where}: expected labels of shape (N,), got shape {array.shape}")
    if not _integral(array):
        raise InputError(f"{where}: expected integer labels, got dtype {array.dtype}")
    limits = np.iinfo(np.int32)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        raise InputError(f"{where}: labels out of the int32 range")
    return array.astype(np.int32)


def _checked(split: Split, where: str) -> Split:
    """Validates shapes, dtypes and label range of a reader's result."""
    images, labels, names = split.images, split.labels, split.class_names
    if images.ndim != 4 or images.dtype != np.uint8:
        raise InputError(f"{where}: expected uint8 images (N, H, W, C), "
                         f"got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise InputError(f"{where}: expected at least one image, got none")
    if len(images) != len(labels):
        raise InputError(f"{where}: {len(images)} images but {len(labels)} labels")
    if not names or len(set(names)) != len(names):
        raise InputError(f"{where}: expected distinct class names, got {names!r}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(names):
        raise InputError(f"{where}: labels must lie in 0..{len(names) - 1} "
                         f"({len(names)} classes), got {low}..{high}")
    return split


def _images_nhwc(array: np.ndarray, where: str) -> np.ndarray:
    """uint8 images (N, H, W, C) from (N, H, W) or (N, H, W, C)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or min(array.shape[1:], default=0) < 1:
        raise InputError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C), "
                         f"got shape {array.shape}")
    return _as_uint8(array, where)


def _digit_names(*label_arrays: np.ndarray) -> tuple[str, ...]:
    """'0', '1', ... up to the largest label seen."""
    top = max((int(a.max()) for a in label_arrays if a.size), default=0)
    return tuple(str(i) for i in range(max(top, 0) + 1))


def _existing(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return path


def _nonempty_file(path: Path) -> Path:
    if not _existing(path).is_file():
        raise InputError(f"{path}: expected a file, found a folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return path


# --- npz -----------------------------------------------------------------------------------


def _read_npz(path: Path, split: str) -> Split:
    """Arrays ``<split>_images``, ``<split>_labels`` and optionally ``class_names``."""
    _nonempty_file(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    # np.load takes anything that is not a zip for a pickle or .npy and says so confusingly.
    if not magic.startswith(b"PK") and not magic.startswith(b"\x93NUMPY"):
        raise InputError(f"{path}: not an .npz archive (no zip signature; starts with "
                         f"{magic!r})")
    try:
        archive = np.load(path, allow_pickle=False)
    except _FILE_ERRORS as e:
        raise InputError(f"{path}: not a readable .npz archive ({_one_line(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: expected an .npz archive, found a single .npy array")
    with archive:
        try:
            _check_npz_members(archive, path, split)
            return _split_from_npz(archive, path, split)
        except InputError:
            raise
        except _FILE_ERRORS as e:  # a damaged member only shows when it is read
            raise InputError(f"{path}: not a readable .npz archive ({_one_line(e)})") from None


def expansion_limit(compressed_bytes: int) -> int:
    """How many bytes a compressed file of ``compressed_bytes`` may expand to."""
    return max(MIN_EXPANSION_LIMIT, MAX_EXPANSION * compressed_bytes)


def _check_npz_members(archive: np.lib.npyio.NpzFile, path: Path, split: str) -> None:
    """Refuses, before anything is allocated, a member whose header declares more data than
    the member holds (a damaged or hostile header would otherwise ask numpy for any amount of
    memory) and a compressed member that expands far beyond its size."""
    zf = archive.zip
    for name in (f"{split}_images", f"{split}_labels", "class_names"):
        member = f"{name}.npy"
        if member not in zf.namelist():
            continue
        info = zf.getinfo(member)
        if info.file_size > expansion_limit(info.compress_size):
            raise InputError(f"{path}: {name}: expands from {info.compress_size} to "
                             f"{info.file_size} bytes, beyond any real data set; refused")
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f, max_header_size=10000)
            header = f.tell()
        if dtype.hasobject:
            raise InputError(f"{path}: {name}: holds Python objects; expected numbers")
        declared = math.prod(shape) * dtype.itemsize
        if declared > info.file_size - header:
            raise InputError(f"{path}: {name}: header declares {dtype} {tuple(shape)} = "
                             f"{declared} bytes, but the member holds only "
                             f"{info.file_size - header}")


def _split_from_npz(archive: np.lib.npyio.NpzFile, path: Path, split: str) -> Split:
    keys = set(archive.files)
    wanted = (f"{split}_images", f"{split}_labels")
    missing = [k for k in wanted if k not in keys]
    if missing:
        raise InputError(f"{path}: missing array(s) {', '.join(missing)}; expected train_images, "
                         "train_labels, test_images, test_labels")
    images = _images_nhwc(archive[wanted[0]], f"{path}: {wanted[0]}")
    labels = _as_labels(archive[wanted[1]], f"{path}: {wanted[1]}")
    if "class_names" in keys:
        names = np.asarray(archive["class_names"])
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(f"{path}: class_names: expected a 1-D array of strings, "
                             f"got {names.dtype} {names.shape}")
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    else:
        # Names cover both splits' labels, so train and test agree on the class count.
        other = f"{SPLITS[1 - SPLITS.index(split)]}_labels"
        others = [_as_labels(archive[other], f"{path}: {other}")] if other in keys else []
        class_names = _digit_names(labels, *others)
    return Split(images, labels, class_names)


# --- MNIST IDX -----------------------------------------------------------------------------

_IDX_IMAGES, _IDX_LABELS = 2051, 2049


def _read_idx(path: Path, split: str) -> Split:
    """The four MNIST IDX files (gzipped or not) in folder ``path``."""
    if not _existing(path).is_dir():
        raise InputError(f"{path}: expected a folder holding the MNIST IDX files")
    stem = "train" if split == "train" else "t10k"
    images_file = _idx_file(path, f"{stem}-images-idx3-ubyte")
    labels_file = _idx_file(path, f"{stem}-labels-idx1-ubyte")
    images = _idx_array(images_file, _IDX_IMAGES, ndim=3)
    labels = _idx_array(labels_file, _IDX_LABELS, ndim=1)
    if len(images) != len(labels):
        raise InputError(f"{images_file} holds {len(images)} images but {labels_file} holds "
                         f"{len(labels)} labels")
    return Split(images[..., None], labels.astype(np.int32), tuple(str(i) for i in range(10)))


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise InputError(f"{folder}: expected {name} or {name}.gz")


def _idx_array(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parses one IDX file of unsigned bytes: magic, ``ndim`` big-endian sizes, then data."""
    raw = _nonempty_file(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; names alone are not trusted
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = _Bounded(f, expansion_limit(len(raw)), path).read()
        except InputError:
            raise
        except _FILE_ERRORS as e:
            raise InputError(f"{path}: corrupt or truncated gzip file ({_one_line(e)})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == _IDX_IMAGES else "labels"
        raise InputError(f"{path}: wrong magic number {found}, expected {magic} (IDX {kind})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python ints: a hostile header cannot overflow it
    if len(raw) - header != expected:
        raise InputError(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of "
                         f"data, found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


# --- CIFAR-10 python batches ---------------------------------------------------------------

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_META = "batches.meta"


def _read_cifar(path: Path, split: str) -> Split:
    """CIFAR-10 python batches, from their folder or the original ``.tar.gz``."""
    batches = _CIFAR_TRAIN if split == "train" else ("test_batch",)
    wanted = (*batches, _CIFAR_META)
    read = _cifar_dir_blobs if _existing(path).is_dir() else _cifar_tar_blobs
    blobs = read(path, wanted)
    missing = [name for name in wanted if name not in blobs]
    if missing:
        raise InputError(f"{path}: missing CIFAR-10 file(s) {', '.join(missing)}")
    meta = _unpickle(blobs[_CIFAR_META], f"{path}/{_CIFAR_META}")
    names = _field(meta, "label_names", f"{path}/{_CIFAR_META}")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    parts = [_cifar_batch(blobs[name], f"{path}/{name}") for name in batches]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Split(images, labels, class_names)


def _cifar_dir_blobs(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    blobs = {}
    for name in wanted:
        if (folder / name).is_file():
            blobs[name] = _nonempty_file(folder / name).read_bytes()
    return blobs


def _cifar_tar_blobs(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    blobs = {}
    with _open_tar(path) as tar:
        for member, data in tar:
            name = PurePosixPath(member).name
            if name in wanted and name not in blobs:
                blobs[name] = data()
                if len(blobs) == len(wanted):
                    break  # no need to decompress the rest
    return blobs


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only plain containers and numpy arrays: a batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        # Old pickles name numpy.core, which numpy 2 keeps only as a deprecated alias.
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        value = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _FILE_ERRORS + (AttributeError, ImportError) as e:
        raise InputError(f"{where}: not a readable CIFAR-10 python batch "
                         f"({_one_line(e)})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a pickled dict, got {type(value).__name__}")
    return value


def _field(batch: dict, key: str, where: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise InputError(f"{where}: missing key {key!r}")


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, where)
    pixels = np.asarray(_field(batch, "data", where))
    labels = _as_labels(np.asarray(_field(batch, "labels", where)), where)
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise InputError(f"{where}: expected data of shape (N, 3072), got {pixels.shape}")
    if len(pixels) != len(labels):
        raise InputError(f"{where}: {len(pixels)} images but {len(labels)} labels")
    # Rows are channel-major (R plane, G plane, B plane), each plane row-major.
    images = _as_uint8(pixels, where).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


# --- tar archives --------------------------------------------------------------------------

_Member = tuple[str, Callable[[], bytes]]  # a member's name, and how to read its bytes


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[Iterator[_Member]]:
    """Streams (member name, read-bytes) for each regular file; errors become InputError.

    Read each member's bytes before moving on: the archive is read as one forward stream,
    so nothing is extracted to disk and a .tar.gz is decompressed once.
    """
    _nonempty_file(path)

    def corrupt(e: BaseException) -> InputError:
        return InputError(f"{path}: corrupt or truncated tar archive ({_one_line(e)})")

    def read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        try:
            return tar.extractfile(member).read()
        except _FILE_ERRORS as e:
            raise corrupt(e) from None

    def members(tar: tarfile.TarFile) -> Iterator[_Member]:
        try:
            for member in tar:
                if member.isfile():
                    yield member.name, functools.partial(read, tar, member)
        except _FILE_ERRORS as e:
            raise corrupt(e) from None

    raw = open(path, "rb")  # noqa: SIM115 - closed below
    try:
        stream = _Bounded(_decompressed(raw), expansion_limit(path.stat().st_size), path)
        tar = tarfile.open(fileobj=stream, mode="r|")
    except InputError:
        raw.close()
        raise
    except _FILE_ERRORS as e:
        raw.close()
        raise InputError(f"{path}: not a readable tar archive ({_one_line(e)})") from None
    with raw, tar:
        yield members(tar)


def _decompressed(raw) -> io.BufferedIOBase:
    """``raw``'s bytes, decompressed as gzip, bzip2 or xz by their magic numbers."""
    import bz2
    import lzma

    magic = raw.peek(6)[:6] if hasattr(raw, "peek") else b""
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.LZMAFile(raw)
    return raw


class _Bounded(io.RawIOBase):
    """A read-only stream that raises :class:`InputError` once more than ``limit`` bytes
    came out of ``inner``: a decompression bomb stops at the limit, not at the memory's."""

    def __init__(self, inner, limit: int, path: Path):
        self.inner, self.limit, self.path, self.count = inner, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        self._add(len(data))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        data = self.inner.read(size)
        self._add(len(data))
        return data

    def _add(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise InputError(f"{self.path}: expands beyond {self.limit} bytes "
                             f"({MAX_EXPANSION}x its size), far beyond any real data set; "
                             "refused")


# --- image folder trees --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TreeImage:
    split: str
    label: str  # the class folder
    file: str  # the file name inside the class folder
    name: str  # the path shown in errors
    data: Callable[[], bytes]


def _read_folder(path: Path, split: str) -> Split:
    """An image tree ``<split>/<class>/<image>`` (maybe under one top folder), dir or tar."""
    cache = _cache_file(_existing(path), split)
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    if path.is_dir():
        result = _decode_tree(_dir_tree(path), path, split)
    else:
        with _open_tar(path) as members:
            result = _decode_tree(_tar_tree(members, path), path, split)
    _write_cache(cache, result)
    return result


def _tree_parts(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """(split, class, file) of a relative path, after one optional top folder.

    None for files outside the split folders (ignored, like hidden files); () for a file in a
    split folder at the wrong depth.
    """
    if any(p.startswith(".") for p in parts):
        return None  # .DS_Store, ._x.jpg and the like are not data
    if len(parts) > 1 and parts[0] not in SPLITS:
        parts = parts[1:]
    if not parts or parts[0] not in SPLITS:
        return None
    return parts if len(parts) == 3 else ()


def _wrong_depth(name: str) -> InputError:
    return InputError(f"{name}: expected images at {'|'.join(SPLITS)}/<class>/<image>")


def _tree_files(path: Path) -> Iterator[Path]:
    """Every file under folder ``path``, sorted, following symbolic links to files and
    folders; a broken link or a link loop raises :class:`InputError` naming it."""
    for root, dirs, files in os.walk(path, followlinks=True):
        here = os.path.realpath(root)
        for d in sorted(dirs):
            full = Path(root) / d
            real = os.path.realpath(full)
            if full.is_symlink() and (here == real or here.startswith(real + os.sep)):
                raise InputError(f"{full}: symbolic link loop (points back to {real})")
        dirs.sort()
        for file in sorted(files):
            full = Path(root) / file
            if full.is_symlink() and not full.exists():
                try:
                    full.stat()
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise InputError(f"{full}: symbolic link loop") from None
                raise InputError(f"{full}: broken symbolic link (points to "
                                 f"{os.readlink(full)}, which does not exist)")
            if full.is_file():
                yield full


def _dir_tree(path: Path) -> Iterator[_TreeImage]:
    for full in _tree_files(path):
        parts = _tree_parts(full.relative_to(path).parts)
        if parts == ():
            raise _wrong_depth(str(full))
        if parts:
            yield _TreeImage(*parts, str(full), full.read_bytes)


def _tar_tree(members: Iterator[_Member], path: Path) -> Iterator[_TreeImage]:
    for member, data in members:
        parts = _tree_parts(PurePosixPath(member).parts)
        if parts == ():
            raise _wrong_depth(f"{path}:{member}")
        if parts:
            yield _TreeImage(*parts, f"{path}:{member}", data)


def _decode_tree(tree: Iterator[_TreeImage], path: Path, split: str) -> Split:
    """Decodes the images of ``split``; classes are the sorted class folders of all splits."""
    classes: set[str] = set()
    found: list[tuple[tuple[str, str], str, np.ndarray]] = []
    for image in tree:
        classes.add(image.label)
        if image.split == split:
            key = (image.label, image.file)
            found.append((key, image.name, _decode_image(image.name, image.data())))
    if not found:
        raise InputError(f"{path}: no images under {split}/<class>/; expected a tree "
                         f"{'|'.join(SPLITS)}/<class>/<image>")
    found.sort(key=lambda item: item[0])  # the same order from a folder and from its tar
    _, first_name, first = found[0]
    for _, name, pixels in found:
        if pixels.shape != first.shape:
            raise InputError(f"{name}: image of {_describe(pixels)}, expected {_describe(first)} "
                             f"like {first_name}")
    class_names = tuple(sorted(classes))
    index = {c: i for i, c in enumerate(class_names)}
    # Sorted paths group the classes; a fixed shuffle keeps the "last N training images are
    # the validation set" convention class-balanced.
    order = np.random.default_rng(0).permutation(len(found))
    images = np.stack([found[i][2] for i in order])
    labels = np.array([index[found[i][0][0]] for i in order], np.int32)
    return Split(images, labels, class_names)


def _describe(pixels: np.ndarray) -> str:
    mode = "grayscale" if pixels.shape[2] == 1 else "RGB"
    return f"{pixels.shape[1]}x{pixels.shape[0]} {mode}"


def _decode_image(name: str, data: bytes) -> np.ndarray:
    """(H, W, C) uint8 pixels of an 8-bit grayscale or RGB image file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            pixels = np.asarray(image)
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image file (unknown or corrupt format)") \
            from None
    except _FILE_ERRORS as e:
        raise InputError(f"{name}: not a readable image file ({_one_line(e)})") from None
    if mode not in ("L", "RGB"):
        raise InputError(f"{name}: image mode {mode}, expected L (8-bit grayscale) or RGB")
    return pixels[..., None] if mode == "L" else pixels


# --- the decoded-tree cache ----------------------------------------------------------------


def cache_dir() -> Path:
    """Where decoded image trees are cached: ``$SCAE_CACHE_DIR`` or ``~/.cache/scae``."""
    return Path(os.environ.get("SCAE_CACHE_DIR") or Path.home() / ".cache" / "scae")


def _cache_file(path: Path, split: str) -> Path:
    """A cache file named by the tree's absolute path, split and every file's size and mtime."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}\0{path.resolve()}\0{split}\n".encode())
    files = [path] if path.is_file() else list(_tree_files(path))
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return cache_dir() / f"folder-{path.name}-{split}-{digest.hexdigest()[:20]}.npz"


def _read_cache(file: Path) -> Split | None:
    """The cached split, or None when absent or unreadable (then it is rebuilt)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as cached:
            names = tuple(str(n) for n in cached["class_names"])
            split = Split(cached["images"], cached["labels"], names)
        return _checked(split, str(file))
    except Exception:  # noqa: BLE001 - any damage to our own cache just means "decode again"
        return None


def _write_cache(file: Path, split: Split) -> None:
    """Writes atomically (temporary file, then rename); failure only costs speed."""
    try:
        with atomic.replacing(file) as tmp, tmp.open("wb") as f:
            np.savez(f, images=split.images, labels=split.labels,
                     class_names=np.array(split.class_names))
    except OSError as e:
        warnings.warn(f"could not cache decoded images in {file.parent}: {_one_line(e)}",
                      stacklevel=3)


# --- a folder of unlabelled images ---------------------------------------------------------


def decoded_folder(path: Path) -> Path:
    """The images of a folder with no labels, as an uncompressed uint8 ``.npy`` (N, H, W, C)
    in :func:`cache_dir` that :class:`scae.data.stream.ImageStream` reads by index.

    The images are every file under ``path`` (subfolders too; hidden files are not data), in
    sorted path order. They are decoded once, one at a time and appended to the file, so memory
    holds one image whatever the folder's size; the file is named, like the labelled trees'
    cache, by the folder's path and every file's size and modification time, so a changed
    folder is decoded again. An unreadable image, or one of another size or mode than the
    first, raises :class:`InputError` naming it."""
    if not _existing(path).is_dir():
        raise InputError(f"{path}: expected a folder of images (data.unlabelled_source="
                         f"folder:<dir>); for a .npy array pass npy:<file.npy>")
    files = [f for f in _tree_files(path)
             if not any(p.startswith(".") for p in f.relative_to(path).parts)]
    if not files:
        raise InputError(f"{path}: no image files under this folder")
    digest = hashlib.sha256(f"{_CACHE_VERSION}\0{path.resolve()}\0unlabelled\n".encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    cache = cache_dir() / f"unlabelled-{path.name}-{digest.hexdigest()[:20]}.npy"
    if cache.is_file():
        return cache
    first = _decode_image(str(files[0]), files[0].read_bytes())
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(files), *first.shape)}
    with atomic.replacing(cache) as tmp, tmp.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for file in files:
            pixels = _decode_image(str(file), file.read_bytes())
            if pixels.shape != first.shape:
                raise InputError(f"{file}: image of {_describe(pixels)}, expected "
                                 f"{_describe(first)} like {files[0]}")
            f.write(np.ascontiguousarray(pixels).tobytes())
    return cache


# --- tfds and the bare names ---------------------------------------------------------------


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Hides tfds's warnings about absent data-set folders while probing."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _can_prepare() -> bool:
    """Whether tfds could build a data set here: that needs TensorFlow (``scae[prepare]``)."""
    return importlib.util.find_spec("tensorflow") is not None


def _tfds_state(name: str, data_dir: str | None) -> str:
    """'ready', 'other format' (prepared, not for random access) or 'absent'; never downloads."""
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if "://" not in where and not (Path(where).expanduser() / name).is_dir():
        return "absent"  # tfds prepares a data set in <dir>/<name>: none, so no import (~1 s)
    try:
        import tensorflow_datasets as tfds

        with _quiet_absl():
            builder = tfds.builder(name, data_dir=data_dir)
            if not builder.is_prepared():
                return "absent"
            formats = builder.info.available_file_formats()
            random_access = set(tfds.core.FileFormat.with_random_access())
            return "ready" if formats & random_access else "other format"
    except Exception:  # noqa: BLE001 - any tfds failure here just means "not available"
        return "absent"


def _read_tfds(name: str, split: str, data_dir: str | None) -> Split:
    """Reads every record of a tfds data set through ``tfds.data_source`` (array_record)."""
    import tensorflow_datasets as tfds

    where = f"tfds:{name}"
    try:
        with _quiet_absl():
            records = tfds.data_source(name, split=split, data_dir=data_dir,
                                       download=_can_prepare())
    except tfds.core.registered.DatasetNotFoundError:
        raise InputError(f"{where}: no tfds data set of that name") from None
    except Exception as e:  # noqa: BLE001 - tfds raises many types for "not prepared here"
        state = _tfds_state(name, data_dir)
        found = (f"prepared, but not as array_record ({_one_line(e)})" if state == "other format"
                 else "not prepared" if state == "absent" else _one_line(e))
        raise InputError(
            f"{where}: {found} in the tfds data dir {data_dir or '(tfds default)'}; prepare it "
            f"on a machine with network (pip install 'scae[prepare]'; tfds build {name} "
            f"--file_format=array_record) or {_ALTERNATIVES}") from None
    features = records.dataset_info.features
    if "image" not in features or "label" not in features:
        raise InputError(f"{where}: expected features 'image' and 'label', got {list(features)}")
    images, labels = [], []
    for i in range(len(records)):
        example = records[i]
        images.append(example["image"])
        labels.append(example["label"])
    return Split(_images_nhwc(np.stack(images), where), _as_labels(np.array(labels), where),
                 tuple(features["label"].names))


def _read_named(name: str, split: str, data_dir: str | None) -> Split:
    """``mnist`` / ``cifar10``: tfds if prepared there, else the embedded MNIST, else an error."""
    if _tfds_state(name, data_dir) == "ready":
        return _read_tfds(name, split, data_dir)
    if name == "mnist":
        embedded = importlib.resources.files("scae") / "assets" / "mnist.npz"
        with importlib.resources.as_file(embedded) as path:
            return _read_npz(path, split)
    raise InputError(
        f"data source {name!r}: tfds has no prepared copy in {data_dir or 'its default data dir'}; "
        f"pass data.source=folder:<cifar10-jpeg.tar.gz or dir>, cifar:<cifar-10-python.tar.gz or "
        f"dir> or tfds:{name} (prepared with pip install 'scae[prepare]'; tfds build {name} "
        "--file_format=array_record)")


_FILE_READERS: dict[str, Callable[[Path, str], Split]] = {
    "npz": _read_npz,
    "idx": _read_idx,
    "cifar": _read_cifar,
    "folder": _read_folder,
}
