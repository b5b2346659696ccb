"""Pixel preprocessing: uint8 images to float32 network inputs, and back for plotting.

Every statistic is fitted on the images passed to :func:`fit_normalizer` (the training split
only, so nothing leaks from validation or test data), then applied unchanged to every split:

1. a fixed scale: 'unit' (x / 255) or 'symmetric' (x / 127.5 - 1);
2. optionally per-channel standardisation (``data.standardize``); or instead
3. ``data.preprocess``: 'gcn', per-image global contrast normalisation (each image minus its
   own mean, divided by its own standard deviation over all pixels and channels), or
   'gcn_zca', GCN followed by ZCA whitening (Coates & Ng 2011; Goodfellow et al. 2013 use
   both for CIFAR-10) with a whitening matrix fitted on the training images.

Standardised and whitened inputs leave the [0, 1] or [-1, 1] range (whitened pixels reach
several units), beyond what a scaled-tanh decoder (|y| < 1.716) can reconstruct: a CAE trained
on them needs a linear decoder output.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scae.errors import InputError

SCALES = ("unit", "symmetric")
PREPROCESS = ("none", "gcn", "gcn_zca")
_CHUNK = 4096  # images per chunk when computing statistics, to bound float64 temporaries
# GCN leaves a (near-)constant image at zero instead of blowing up its noise (pylearn2's
# min_divisor).
GCN_MIN_STD = 1e-8


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    """Maps uint8 pixels to float32: a fixed scale, then per-channel standardisation or GCN and
    ZCA whitening, with statistics of the training images.

    ``scale`` is 'unit' or 'symmetric'; ``mean`` and ``std`` (shape (C,), on the scaled values)
    are None when not standardising. ``preprocess`` is one of :data:`PREPROCESS`; with GCN,
    ``gcn_mean`` and ``gcn_std`` are the training images' average per-image mean and standard
    deviation (used only to draw images back, see :func:`to_uint8`); with ZCA, ``zca_mean``
    (D,), ``zca`` (D, D) and ``zca_inverse`` (D, D) act on flattened GCN images of D pixels.
    """

    scale: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    preprocess: str = "none"
    gcn_mean: float = 0.0
    gcn_std: float = 1.0
    zca_mean: np.ndarray | None = None
    zca: np.ndarray | None = None
    zca_inverse: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"config.data.scale: expected one of {', '.join(SCALES)}, "
                             f"got {self.scale!r}")
        if self.preprocess not in PREPROCESS:
            raise InputError(f"config.data.preprocess: expected one of {', '.join(PREPROCESS)}, "
                             f"got {self.preprocess!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Normalizer: give both mean and std, or neither")
        if (self.preprocess == "gcn_zca") != (self.zca is not None):
            raise ValueError("Normalizer: a ZCA matrix goes with preprocess='gcn_zca' only")

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        """float32 images of the same shape as the uint8 ``images_uint8`` (N, H, W, C)."""
        images = np.asarray(images_uint8)
        if self.preprocess == "none" or images.ndim < 4 or len(images) <= _CHUNK:
            return self._apply(images)
        out = np.empty(images.shape, np.float32)
        for start in range(0, len(images), _CHUNK):
            out[start:start + _CHUNK] = self._apply(images[start:start + _CHUNK])
        return out

    def raw(self, images: np.ndarray) -> np.ndarray:
        """float32 network inputs from raw images (N, H, W, C): uint8 pixels (or integers in
        0..255), or floats in [0, 1] (pixels / 255). Anything else cannot be raw pixels and
        is refused with an :class:`InputError` (floats outside [0, 1] are most likely inputs
        already transformed, which would be transformed twice)."""
        x = np.asarray(images)
        if self.zca is not None and int(np.prod(x.shape[1:])) != self.zca.shape[0]:
            raise InputError(f"images of {'x'.join(map(str, x.shape[1:]))}: the input "
                             f"transform's ZCA whitening was fitted on images of "
                             f"{self.zca.shape[0]} values")
        if np.issubdtype(x.dtype, np.floating):
            check_unit_floats(x)
            return self._apply(x, from_unit=True)
        return self(as_uint8(x))

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The transform as plain fields (JSON) and arrays (an .npz), for :meth:`from_state`:
        the round trip is bit-exact. The ZCA matrix is kept as its upper triangle and the few
        entries below it that rounding left unequal to their mirror (:func:`pack_symmetric`),
        half of its D x D values; its inverse, which only draws images back, is computed again
        from it (:func:`zca_inverse`), as the fit computed it."""
        fields = {"scale": self.scale, "preprocess": self.preprocess,
                  "gcn_mean": float(self.gcn_mean), "gcn_std": float(self.gcn_std)}
        arrays = {k: np.asarray(getattr(self, k)) for k in ("mean", "std", "zca_mean")
                  if getattr(self, k) is not None}
        if self.zca is not None:
            arrays.update(pack_symmetric(np.asarray(self.zca), "zca"))
        return fields, arrays

    @classmethod
    def from_state(cls, fields: dict, arrays: dict[str, np.ndarray]) -> Normalizer:
        """The transform that :meth:`state` gave ``fields`` and ``arrays`` for (also the whole
        ``zca`` and ``zca_inverse`` of transforms saved before they were packed)."""
        arrays = dict(arrays)
        if "zca_upper" in arrays:
            arrays["zca"] = unpack_symmetric(arrays, "zca")
        if arrays.get("zca") is not None and "zca_inverse" not in arrays:
            arrays["zca_inverse"] = zca_inverse(arrays["zca"])
        return cls(fields["scale"], preprocess=fields.get("preprocess", "none"),
                   gcn_mean=fields.get("gcn_mean", 0.0), gcn_std=fields.get("gcn_std", 1.0),
                   **{k: (np.asarray(arrays[k]) if k in arrays else None) for k in _ARRAYS})

    def _apply(self, images: np.ndarray, from_unit: bool = False) -> np.ndarray:
        x = images.astype(np.float32)  # a fresh copy, then in place
        if from_unit:  # floats in [0, 1] are pixels already divided by 255
            if self.scale == "symmetric":
                x *= 2.0
                x -= 1.0
        elif self.scale == "unit":
            x /= 255.0
        else:
            x /= 127.5
            x -= 1.0
        if self.mean is not None:
            x -= self.mean
            x /= self.std
        if self.preprocess != "none":
            x = gcn(x)
        if self.zca is not None:
            flat = x.reshape(len(x), -1) - self.zca_mean
            x = (flat @ self.zca).astype(np.float32).reshape(x.shape)
        return x


_ARRAYS = ("mean", "std", "zca_mean", "zca", "zca_inverse")
# Floats a hair outside [0, 1] (interpolation, rounding) still count as pixels.
_UNIT_SLACK = 1e-4


def check_unit_floats(x: np.ndarray) -> None:
    """Raises :class:`InputError` unless the float images ``x`` are finite and in [0, 1]."""
    if not x.size:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("images: not finite (NaN or inf); expected uint8 pixels or floats in "
                         "[0, 1]")
    if lo < -_UNIT_SLACK or hi > 1 + _UNIT_SLACK:
        raise InputError(f"images: floats in [{lo:.4g}, {hi:.4g}]; expected raw pixels, uint8 "
                         f"0..255 or floats in [0, 1] (the input transform is applied to them: "
                         f"do not transform them first)")


def as_uint8(x: np.ndarray) -> np.ndarray:
    """Integer pixel arrays as uint8; refuses other dtypes and integers outside 0..255."""
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"images of dtype {x.dtype}: expected uint8 pixels or floats in [0, 1]")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise InputError(f"images: integers in [{x.min()}, {x.max()}]; expected pixels in 0..255")
    return x.astype(np.uint8)


def as_pixels(images: np.ndarray) -> np.ndarray:
    """Raw images as pixel values for fitting a transform: uint8 as they are, floats in [0, 1]
    as float32 0..255 (refused as :meth:`Normalizer.raw` refuses them)."""
    x = np.asarray(images)
    if np.issubdtype(x.dtype, np.floating):
        check_unit_floats(x)
        return x.astype(np.float32) * np.float32(255.0)
    return as_uint8(x)


def as_batch(x, channels: int | None = None):
    """``x`` (a numpy or JAX array) as a batch of images (N, H, W, C), or one line saying why
    it is not one. (N, H, W) is a batch of grey images when ``channels`` is 1 or not known."""
    shape = tuple(x.shape)
    want = (f"a batch of images (N, H, W, {channels or 'C'})"
            + (" or (N, H, W)" if channels in (1, None) else ""))
    if x.ndim == 4:
        if channels is not None and shape[-1] != channels:
            raise InputError(f"images of shape {shape}: expected {channels} channel(s), "
                             f"{want}")
        return x
    if x.ndim == 3 and channels in (1, None) and shape[-1] != 1:
        return x[..., None]
    if x.ndim == 2 or (x.ndim == 3 and shape[-1] == (channels or 1)):
        raise InputError(f"images of shape {shape}: one image, not a batch; expected {want} "
                         f"(pass images[None] for one)")
    raise InputError(f"images of shape {shape}: expected {want}")


def gcn(x: np.ndarray) -> np.ndarray:
    """Per-image global contrast normalisation of float images (N, H, W, C): each image minus
    its mean, divided by its standard deviation (over all its pixels and channels)."""
    x = np.asarray(x, np.float32)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((x - mean) / np.maximum(std, GCN_MIN_STD)).astype(np.float32)


def _scaled(values: np.ndarray, scale: str) -> np.ndarray:
    return values / 255.0 if scale == "unit" else values / 127.5 - 1.0


def fit_normalizer(images: np.ndarray, scale: str, standardize: bool,
                   preprocess: str = "none", zca_epsilon: float = 0.1) -> Normalizer:
    """A :class:`Normalizer` whose statistics come from ``images`` (N, H, W, C).

    Pass the training images only, so that no statistic leaks from validation or test data.
    ``zca_epsilon`` is added to the covariance's eigenvalues before whitening (on GCN images,
    whose pixels have about unit variance): it keeps the whitening from amplifying the
    smallest, noisiest components without bound.
    """
    if preprocess not in PREPROCESS:
        raise InputError(f"config.data.preprocess: expected one of {', '.join(PREPROCESS)}, "
                         f"got {preprocess!r}")
    images = np.asarray(images)
    base = _fit_standardize(images, scale) if standardize else Normalizer(scale)
    if preprocess == "none":
        return base
    # Per-image statistics of the scaled images, only to draw GCN images back to pixels.
    means, stds = [], []
    for start in range(0, len(images), _CHUNK):
        x = base(images[start:start + _CHUNK]).reshape(min(_CHUNK, len(images) - start), -1)
        means.append(x.mean(1, dtype=np.float64))
        stds.append(x.std(1, dtype=np.float64))
    gcn_mean = float(np.concatenate(means).mean()) if means else 0.0
    gcn_std = float(np.concatenate(stds).mean()) if stds else 1.0
    fields = dict(scale=scale, mean=base.mean, std=base.std, gcn_mean=gcn_mean,
                  gcn_std=gcn_std if gcn_std > 0 else 1.0)
    if preprocess == "gcn":
        return Normalizer(preprocess="gcn", **fields)
    if not zca_epsilon > 0:
        raise InputError(f"config.data.zca_epsilon: expected a number > 0, got {zca_epsilon!r}")
    mean, w, w_inv = _fit_zca(Normalizer(preprocess="gcn", **fields), images, zca_epsilon)
    return Normalizer(preprocess="gcn_zca", zca_mean=mean, zca=w, zca_inverse=w_inv, **fields)


def _fit_standardize(images: np.ndarray, scale: str) -> Normalizer:
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


def _fit_zca(gcn_normalizer: Normalizer, images: np.ndarray, epsilon: float):
    """The mean (D,), whitening matrix W and its inverse (D, D) of the GCN images:
    W = U diag(1 / sqrt(s + epsilon)) U^T for the covariance's eigenpairs (s, U), in float32,
    and the inverse of that float32 matrix (:func:`zca_inverse`)."""
    n = len(images)
    if n < 2:
        raise InputError(f"config.data.preprocess=gcn_zca: needs at least 2 training images, "
                         f"got {n}")
    d = int(np.prod(images.shape[1:]))
    total = np.zeros(d)
    gram = np.zeros((d, d))
    for start in range(0, n, _CHUNK):
        x = gcn_normalizer(images[start:start + _CHUNK]).reshape(-1, d).astype(np.float64)
        total += x.sum(0)
        gram += x.T @ x
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    s, u = np.linalg.eigh(cov)
    s = np.maximum(s, 0.0)  # rounding can make the null space's eigenvalues slightly negative
    w = ((u / np.sqrt(s + epsilon)) @ u.T).astype(np.float32)
    return mean.astype(np.float32), w, zca_inverse(w)


def zca_inverse(w: np.ndarray) -> np.ndarray:
    """The inverse of the float32 whitening matrix ``w``, computed in float64: what undoes the
    whitening to draw images back. A fit and a loaded transform compute it from the same
    float32 matrix, so that it need not be saved."""
    return np.linalg.inv(np.asarray(w, np.float64)).astype(np.float32)


def pack_symmetric(m: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """A square matrix that is symmetric up to rounding, exactly, in about half its size:
    ``<name>_upper`` (its upper triangle, diagonal included, row by row) and the flat indices
    and values of the entries below the diagonal that differ from their mirror image
    (``<name>_lower_index``, ``<name>_lower_value``)."""
    rows, cols = np.triu_indices(m.shape[0])
    mirrored = np.triu(m) + np.triu(m, 1).T
    differ = np.flatnonzero(np.tril(mirrored != m, -1)) if m.size else np.zeros(0, np.int64)
    return {f"{name}_upper": m[rows, cols], f"{name}_lower_index": differ.astype(np.int64),
            f"{name}_lower_value": m.reshape(-1)[differ]}


def unpack_symmetric(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The matrix that :func:`pack_symmetric` packed as ``name``, bit for bit."""
    upper = np.asarray(arrays[f"{name}_upper"])
    d = int(round((np.sqrt(8 * len(upper) + 1) - 1) / 2))
    if d * (d + 1) // 2 != len(upper):
        raise ValueError(f"{name}_upper: {len(upper)} values are no triangle")
    m = np.zeros((d, d), upper.dtype)
    m[np.triu_indices(d)] = upper
    m += np.triu(m, 1).T
    m.reshape(-1)[np.asarray(arrays[f"{name}_lower_index"])] = arrays[f"{name}_lower_value"]
    return m


def to_uint8(images_float: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """The inverse of ``normalizer``, rounded and clipped to uint8 0..255 (for plotting).

    Exact up to rounding for scaling and standardisation; ZCA is undone with the stored
    inverse matrix. GCN drops each image's own mean and contrast, which cannot be recovered:
    images come back with the training images' average mean and contrast instead.
    """
    x = np.asarray(images_float, dtype=np.float32)
    if normalizer.zca_inverse is not None:
        shape = x.shape
        x = (x.reshape(-1, normalizer.zca_inverse.shape[0]) @ normalizer.zca_inverse
             + normalizer.zca_mean).reshape(shape)
    if normalizer.preprocess != "none":
        x = x * normalizer.gcn_std + normalizer.gcn_mean
    if normalizer.mean is not None:
        x = x * normalizer.std + normalizer.mean
    x = x * 255.0 if normalizer.scale == "unit" else (x + 1.0) * 127.5
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
