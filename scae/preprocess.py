"""Pixel scaling: uint8 images to float32 network inputs, and back for plotting."""

from __future__ import annotations

import dataclasses

import numpy as np

from scae.errors import InputError

SCALES = ("unit", "symmetric")
_CHUNK = 4096  # images per chunk when computing statistics, to bound float64 temporaries


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    """Maps uint8 pixels to float32: a fixed scale, then optional per-channel standardisation.

    ``scale`` is 'unit' (x / 255, in [0, 1]) or 'symmetric' (x / 127.5 - 1, in [-1, 1]);
    ``mean`` and ``std`` (shape (C,), on the scaled values) are None when not standardising.
    """

    scale: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"config.data.scale: expected one of {', '.join(SCALES)}, "
                             f"got {self.scale!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Normalizer: give both mean and std, or neither")

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        """float32 images of the same shape as the uint8 ``images_uint8`` (..., C)."""
        x = np.asarray(images_uint8).astype(np.float32)  # a fresh copy, then in place
        if self.scale == "unit":
            x /= 255.0
        else:
            x /= 127.5
            x -= 1.0
        if self.mean is not None:
            x -= self.mean
            x /= self.std
        return x


def _scaled(values: np.ndarray, scale: str) -> np.ndarray:
    return values / 255.0 if scale == "unit" else values / 127.5 - 1.0


def fit_normalizer(images: np.ndarray, scale: str, standardize: bool) -> Normalizer:
    """A :class:`Normalizer` whose per-channel statistics come from ``images`` (N, H, W, C).

    Pass the training images only, so that no statistic leaks from validation or test data.
    """
    if not standardize:
        return Normalizer(scale)
    images = np.asarray(images)
    channels = images.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    # Raw-pixel statistics, mapped through the affine scale; a constant channel keeps std 1.
    step = 1 / 255.0 if scale == "unit" else 1 / 127.5
    std = np.where(std * step > 1e-6, std * step, 1.0)
    return Normalizer(scale, _scaled(mean, scale).astype(np.float32), std.astype(np.float32))


def to_uint8(images_float: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """The inverse of ``normalizer``, rounded and clipped to uint8 0..255 (for plotting)."""
    x = np.asarray(images_float, dtype=np.float32)
    if normalizer.mean is not None:
        x = x * normalizer.std + normalizer.mean
    x = x * 255.0 if normalizer.scale == "unit" else (x + 1.0) * 127.5
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
