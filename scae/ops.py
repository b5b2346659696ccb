"""Array primitives shared by the CAE and the CNN: activations, convolutions, pooling.

Layout is NHWC for activations and HWIO for kernels throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_DIMS = ("NHWC", "HWIO", "NHWC")


def scaled_tanh(x: Array) -> Array:
    """LeCun's 1.7159 * tanh(2x/3): unit gain around 0, range about (-1.7, 1.7)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "scaled_tanh": scaled_tanh,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[name]


def conv_valid(x: Array, w: Array) -> Array:
    """Valid 2-D convolution (cross-correlation, as in every DL library), NHWC x HWIO."""
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS)


def conv_full_tied(h: Array, w: Array) -> Array:
    """The paper's tied decoder: a full convolution of ``h`` with ``w`` rotated 180 degrees.

    ``w`` is the encoder's HWIO kernel (in -> out maps); the decoder maps ``out`` back to ``in``,
    so this is exactly the transposed convolution of the encoder, i.e. the VJP of
    :func:`conv_valid` with respect to its input. Output spatial size is input + k - 1.
    """
    k_h, k_w = w.shape[0], w.shape[1]
    w_dec = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # HW(out)(in): rotate 180, swap in/out maps
    pad = ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1))
    return lax.conv_general_dilated(h, w_dec, (1, 1), pad, dimension_numbers=_DIMS)


def conv_full(h: Array, w_dec: Array) -> Array:
    """Full convolution with an independent decoder kernel ``w_dec`` (HWIO, hidden -> input)."""
    k_h, k_w = w_dec.shape[0], w_dec.shape[1]
    pad = ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1))
    return lax.conv_general_dilated(h, w_dec, (1, 1), pad, dimension_numbers=_DIMS)


def _pad_to_multiple(x: Array, p: int, value: float) -> Array:
    """Pads H and W at the end to multiples of ``p`` (ceil-mode pooling of odd sizes)."""
    ph, pw = -x.shape[1] % p, -x.shape[2] % p
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=value)
    return x


def _windows(x: Array, p: int) -> Array:
    """(N, H, W, C) -> (N, H/p, p, W/p, p, C), no data movement beyond a reshape."""
    n, h, w, c = x.shape
    return x.reshape(n, h // p, p, w // p, p, c)


def max_pool(x: Array, p: int) -> Array:
    """Non-overlapping p x p max-pooling with subsampling; a partial edge window is kept."""
    if p == 1:
        return x
    return _windows(_pad_to_multiple(x, p, -jnp.inf), p).max(axis=(2, 4))


def pool_mask(x: Array, p: int) -> Array:
    """True at the first maximum (row-major) of each non-overlapping p x p window of ``x``."""
    h, w = x.shape[1], x.shape[2]
    xw = _windows(_pad_to_multiple(x, p, -jnp.inf), p)
    is_max = xw == xw.max(axis=(2, 4), keepdims=True)
    # A unique priority per window position, highest first: the first maximum wins a tie.
    priority = (p * p - jnp.arange(p * p, dtype=jnp.int32)).reshape(1, 1, p, 1, p, 1)
    ranked = jnp.where(is_max, priority, 0)
    keep = ranked == ranked.max(axis=(2, 4), keepdims=True)
    return keep.reshape(x.shape[0], xw.shape[1] * p, xw.shape[3] * p, x.shape[3])[:, :h, :w, :]


def pool_sparsify(x: Array, p: int) -> Array:
    """Keeps the maximum of each non-overlapping p x p window and zeroes the rest (the paper's
    max-pooling sparsity): pool followed by unpooling at the argmax, with no subsampling.

    Ties go to the first position of the window in row-major order, so exactly one value per
    window survives. The gradient flows only through the kept values, as for max-pooling.
    """
    if p == 1:
        return x
    return jnp.where(pool_mask(x, p), x, 0.0)


def unpool(pooled: Array, x: Array, p: int) -> Array:
    """Puts each value of ``pooled`` back at the argmax ("switch") of its window in ``x``."""
    if p == 1:
        return pooled
    return jnp.where(pool_mask(x, p), upsample_nearest(pooled, p, x.shape[1:3]), 0.0)


def upsample_nearest(x: Array, p: int, shape: tuple[int, int]) -> Array:
    """Nearest-neighbour upsampling by ``p``, cropped to spatial ``shape``."""
    if p == 1:
        return x
    x = jnp.repeat(jnp.repeat(x, p, axis=1), p, axis=2)
    return x[:, : shape[0], : shape[1], :]
