"""Unlabelled images that stream from disk: pretraining on more images than fit in memory.

``config.data.unlabelled_source`` names them (:func:`open_source`): ``npy:<file.npy>``, one
uint8 array (N, H, W, C) or (N, H, W), or ``folder:<dir>``, every image file under a folder
with no labels, decoded once into such a file in the cache folder
(:func:`scae.data.sources.decoded_folder`).

The format is a plain ``.npy`` file read with positional reads (``os.preadv``), not ArrayRecord
or ``np.memmap``: every image has the same size, so image i lies at a fixed offset and a
positional read is all the random access it needs, without a second copy of the data set in
another record format or a decoder per record. A memory map would do the same reads, but the
pages it touches count in the process's resident memory until the kernel drops them; the page
cache behind ``pread`` does not, so the resident memory stays that of the images a caller asked
for.

Reading is by index (:meth:`ImageStream.read`): the training driver reads, for each compiled
chunk of steps, the images its batches take in the seeded order of the epoch
(:class:`scae.train.driver.Source`), so the order, and resuming mid-epoch, are those of
in-memory data. Nothing is read that the caller does not ask for: in a multi-process run each
process asks only for the images its own devices train on (its slice of every batch, or its
seeds' batches: :func:`scae.train.parallel.seed_batches`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scae.config import UNLABELLED_SOURCES
from scae.data import sources
from scae.errors import InputError

_DIGEST_CHUNK = 16 << 20  # bytes hashed at a time: bounds the memory of a data set's digest


class ImageStream:
    """The uint8 images of a ``.npy`` file (N, H, W, C), read by index; (N, H, W) is read as
    one channel. Opening checks the header against the file's size: a wrong dtype, shape or a
    truncated file raises :class:`InputError` naming the file."""

    def __init__(self, path: str | os.PathLike, where: str | None = None):
        self.path = Path(path)
        self.where = where or str(self.path)
        shape, self._offset = _npy_header(self.path, self.where)
        self.shape: tuple[int, int, int, int] = shape if len(shape) == 4 else (*shape, 1)
        self._item = math.prod(self.shape[1:])
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return self.shape[1:]

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images (len(indices), H, W, C) at ``indices``, in their order (repeats
        allowed). Reads go in ascending index order, runs of consecutive indices in one read,
        so a sorted request reads the file front to back."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"{self.where}: image index out of 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")
        ranked = idx[order]
        starts = np.flatnonzero(np.diff(ranked, prepend=-2) != 1)
        ends = np.append(starts[1:], len(ranked))
        got = np.empty_like(out)
        flat = memoryview(got.reshape(-1))
        for a, b in zip(starts.tolist(), ends.tolist()):
            self._read_into(flat[a * self._item:b * self._item],
                            self._offset + int(ranked[a]) * self._item)
        out[order] = got
        return out

    def digest(self) -> str:
        """A hash of the images' shape and every byte of them, read in bounded chunks: what a
        workdir records of the data its stacks were pretrained on."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"|u1{self.shape};".encode())
        total = len(self) * self._item
        buffer = bytearray(min(_DIGEST_CHUNK, total))
        view = memoryview(buffer)
        for start in range(0, total, len(buffer)):
            size = min(len(buffer), total - start)
            self._read_into(view[:size], self._offset + start)
            h.update(view[:size])
        return h.hexdigest()

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        """Fills ``buffer`` from byte ``offset`` of the file; a short read (the file shrank
        since it was opened) raises :class:`InputError`."""
        done = 0
        while done < len(buffer):
            try:
                n = os.preadv(self._fd, [buffer[done:]], offset + done)
            except OSError as e:
                raise InputError(f"{self.where}: read failed ({e.strerror})") from None
            if n == 0:
                raise InputError(f"{self.where}: the file ended at byte {offset + done}, "
                                 f"before the images its header declares")
            done += n


def _npy_header(path: Path, where: str) -> tuple[tuple[int, ...], int]:
    """(shape, byte offset of the data) of the uint8 ``.npy`` file ``path``, checked."""
    if not path.exists():
        raise InputError(f"{where}: no such file")
    if not path.is_file():
        raise InputError(f"{where}: expected a .npy file, found a folder")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f, max_header_size=10000)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise InputError(f"{where}: not a readable .npy file ({_one_line(e)})") from None
    if dtype != np.uint8:
        raise InputError(f"{where}: expected uint8 pixels, got dtype {dtype}")
    if len(shape) not in (3, 4) or min(shape[1:]) < 1:
        raise InputError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C), "
                         f"got shape {tuple(shape)}")
    if fortran:
        raise InputError(f"{where}: a Fortran-ordered array; expected C order (np.save of a "
                         f"C-contiguous array)")
    if shape[0] < 1:
        raise InputError(f"{where}: expected at least one image, got none")
    declared, held = math.prod(shape), path.stat().st_size - offset
    if held != declared:
        raise InputError(f"{where}: header declares uint8 {tuple(shape)} = {declared} bytes, "
                         f"the file holds {held}")
    return tuple(shape), offset


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainStream:
    """The images pretraining trains on when they stream: ``images`` (the whole file), the
    seeded subset of them ``indices`` (None: all), each read through ``transform`` (uint8 to
    the network's float32 inputs, :class:`scae.data.preprocess.Normalizer`). It is a
    :class:`scae.train.driver.Source`: ``read`` takes indices into the subset."""

    images: ImageStream
    transform: Callable[[np.ndarray], np.ndarray]
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C) as an array of the same images would have."""
        return (len(self), *self.images.image_shape)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """float32 network inputs of images ``indices`` (of the subset), in that order."""
        idx = np.asarray(indices)
        return self.transform(self.images.read(idx if self.indices is None
                                               else self.indices[idx]))


def open_source(source: str) -> ImageStream:
    """The images of ``config.data.unlabelled_source``: ``npy:<file>`` streamed as it is,
    ``folder:<dir>`` decoded once into the cache (:func:`scae.data.sources.decoded_folder`)
    and streamed from there. Raises :class:`InputError` for anything else."""
    prefix, sep, rest = str(source).partition(":")
    if not sep or prefix not in UNLABELLED_SOURCES or not rest:
        raise InputError(f"config.data.unlabelled_source {source!r}: expected npy:<file.npy> "
                         f"or folder:<dir>")
    path = Path(rest).expanduser()
    if prefix == "npy":
        return ImageStream(path)
    return ImageStream(sources.decoded_folder(path), where=str(path))
