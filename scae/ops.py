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


CONV_IMPLS = ("auto", "xla", "matmul")


def resolve_impl(impl: str) -> str:
    """'auto' picks 'matmul' on the CPU, where XLA's own convolutions of these shapes are
    several times slower than a patches-times-kernel matmul, and 'xla' (cuDNN, TPU convs)
    elsewhere. See docs/performance.md for the measurements."""
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return impl


def im2col(x: Array, kh: int, kw: int) -> Array:
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) valid patches, features in HWI order (so that an
    HWIO kernel reshaped to (kh*kw*C, O) multiplies them)."""
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)],
                           axis=-1)


def col2im(cols: Array, kh: int, kw: int, c: int) -> Array:
    """The adjoint of :func:`im2col`: scatter-adds each patch back, (N, Ho+kh-1, Wo+kw-1, C)."""
    n, ho, wo, _ = cols.shape
    cols = cols.reshape(n, ho, wo, kh, kw, c)
    zero = jnp.array(0, cols.dtype)
    out = None
    for i in range(kh):
        for j in range(kw):
            t = lax.pad(cols[:, :, :, i, j, :], zero,
                        ((0, 0, 0), (i, kh - 1 - i, 0), (j, kw - 1 - j, 0), (0, 0, 0)))
            out = t if out is None else out + t
    return out


def _matmul(a: Array, b: Array) -> Array:
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))


def _matmul_tn(a: Array, b: Array) -> Array:
    """a^T b over the leading (row) axis of both: a kernel gradient."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _matmul_nt(a: Array, b: Array) -> Array:
    """a b^T over the last axis of both: an input gradient."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())))


# Both convolutions below are one matmul each way, with hand-written VJPs: autodiff through
# the patches would build the gradients from many small strided ops, which XLA's CPU backend
# runs far slower than the three large matmuls used here.
@jax.custom_vjp
def _conv_valid_mm(x: Array, w: Array) -> Array:
    return _conv_valid_mm_fwd(x, w)[0]


def _conv_valid_mm_fwd(x, w):
    kh, kw, ci, co = w.shape
    p = im2col(x, kh, kw)
    n, ho, wo, kk = p.shape
    p2 = p.reshape(-1, kk)
    return _matmul(p2, w.reshape(kk, co)).reshape(n, ho, wo, co), (p2, w)


def _conv_valid_mm_bwd(res, g):
    p2, w = res
    kh, kw, ci, co = w.shape
    n, ho, wo, _ = g.shape
    g2 = g.reshape(-1, co)
    dw = _matmul_tn(p2, g2).reshape(w.shape)
    dx = col2im(_matmul_nt(g2, w.reshape(-1, co)).reshape(n, ho, wo, -1), kh, kw, ci)
    return dx, dw


_conv_valid_mm.defvjp(_conv_valid_mm_fwd, _conv_valid_mm_bwd)


@jax.custom_vjp
def _conv_full_tied_mm(h: Array, w: Array) -> Array:
    kh, kw, ci, co = w.shape
    n, ho, wo, _ = h.shape
    cols = _matmul_nt(h.reshape(-1, co), w.reshape(-1, co))
    return col2im(cols.reshape(n, ho, wo, -1), kh, kw, ci)


def _conv_full_tied_mm_fwd(h, w):
    return _conv_full_tied_mm(h, w), (h, w)


def _conv_full_tied_mm_bwd(res, g):
    h, w = res
    kh, kw, ci, co = w.shape
    p2 = im2col(g, kh, kw).reshape(-1, kh * kw * ci)
    h2 = h.reshape(-1, co)
    return _matmul(p2, w.reshape(-1, co)).reshape(h.shape), _matmul_tn(p2, h2).reshape(w.shape)


_conv_full_tied_mm.defvjp(_conv_full_tied_mm_fwd, _conv_full_tied_mm_bwd)


def conv_valid(x: Array, w: Array, impl: str = "auto") -> Array:
    """Valid 2-D convolution (cross-correlation, as in every DL library), NHWC x HWIO."""
    if resolve_impl(impl) == "matmul":
        return _conv_valid_mm(x, w)
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS)


def conv_full_tied(h: Array, w: Array, impl: str = "auto") -> Array:
    """The paper's tied decoder: a full convolution of ``h`` with ``w`` rotated 180 degrees.

    ``w`` is the encoder's HWIO kernel (in -> out maps); the decoder maps ``out`` back to ``in``,
    so this is exactly the transposed convolution of the encoder, i.e. the VJP of
    :func:`conv_valid` with respect to its input. Output spatial size is input + k - 1.
    """
    if resolve_impl(impl) == "matmul":
        return _conv_full_tied_mm(h, w)
    k_h, k_w = w.shape[0], w.shape[1]
    w_dec = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # HW(out)(in): rotate 180, swap in/out maps
    pad = ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1))
    return lax.conv_general_dilated(h, w_dec, (1, 1), pad, dimension_numbers=_DIMS)


def conv_full(h: Array, w_dec: Array, impl: str = "auto") -> Array:
    """Full convolution with an independent decoder kernel ``w_dec`` (HWIO, hidden -> input)."""
    k_h, k_w = w_dec.shape[0], w_dec.shape[1]
    h = jnp.pad(h, ((0, 0), (k_h - 1, k_h - 1), (k_w - 1, k_w - 1), (0, 0)))
    return conv_valid(h, w_dec, impl)


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
