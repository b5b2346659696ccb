"""Array primitives shared by the CAE and the CNN: activations, convolutions, pooling.

Layout is NHWC for activations and HWIO for kernels throughout.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scae.models import winograd

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


# Each activation's largest slope. A unit whose slope is below SATURATED of it passes back
# almost none of the gradient that reaches it: a saturated tanh, or a relu at zero.
MAX_SLOPES = {"scaled_tanh": 1.7159 * 2.0 / 3.0, "tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}
SATURATED = 0.02


def saturated(name: str, z: Array) -> Array:
    """Whether each pre-activation in ``z`` puts activation ``name`` where its slope is below
    :data:`SATURATED` of its largest."""
    _, slope = jax.jvp(activation(name), (z,), (jnp.ones_like(z),))
    return slope < SATURATED * MAX_SLOPES[name]


CONV_IMPLS = ("auto", "xla", "matmul", "winograd")

# Where 'winograd' applies Winograd (docs/performance.md): 5x5 kernels over at least 16 input
# maps. Below that the transforms cost about as much as they save (conv 1 has one or three
# maps: its matmuls would have K = 1 or 3); the paper's 3x3 layers (one or four tiles per map)
# measured slower than their patches matmul.
WINOGRAD_KERNELS = (5,)
WINOGRAD_MIN_MAPS = 16


def resolve_impl(impl: str) -> str:
    """'auto' picks 'winograd' on the CPU and 'xla' (cuDNN, TPU convs) elsewhere.

    'matmul' is one patches-times-kernel matmul per convolution (XLA's own CPU convolutions
    of these shapes are several times slower); 'winograd' is the same except that
    convolutions with a kernel size in :data:`WINOGRAD_KERNELS` over at least
    :data:`WINOGRAD_MIN_MAPS` input maps run by :mod:`scae.models.winograd` (2.8x fewer
    multiplications for 5x5). See docs/performance.md for the measurements."""
    if impl == "auto":
        return "winograd" if jax.default_backend() == "cpu" else "xla"
    return impl


def _use_winograd(impl: str, w: Array) -> bool:
    """Whether this convolution runs by :mod:`scae.models.winograd`, in float32 whatever the compute
    dtype. Its transforms' values are up to 5x the inputs' and the output sums them back, so
    bf16 operands in its matmuls cost 13x the error of a bf16 direct convolution (2.9% rms
    against 0.22%), while float32 Winograd ran faster than the bf16 patches path even on an
    AMX CPU (docs/performance.md): with 'bfloat16' these layers keep float32 Winograd, and
    impl='matmul' puts them on bf16 patches."""
    return (resolve_impl(impl) == "winograd" and winograd.supports(w.shape)
            and w.shape[0] in WINOGRAD_KERNELS and w.shape[2] >= WINOGRAD_MIN_MAPS)


def _patch_path(impl: str) -> bool:
    """Whether a convolution not taken by Winograd runs as patches x kernel."""
    return resolve_impl(impl) in ("matmul", "winograd")


COMPUTE_DTYPES = ("float32", "bfloat16")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DEFAULT_DTYPE: contextvars.ContextVar[str] = contextvars.ContextVar("compute_dtype",
                                                                     default="float32")


@contextlib.contextmanager
def compute_dtype(dtype: str) -> Iterator[None]:
    """Within the block, ops called with ``dtype=None`` trace with ``dtype`` (one of
    :data:`COMPUTE_DTYPES`), as ``jax.default_matmul_precision`` does for precision. It acts
    when a function is traced, so wrap the tracing (the first call, or ``lower``)."""
    resolve_dtype(dtype)
    token = _DEFAULT_DTYPE.set(dtype)
    try:
        yield
    finally:
        _DEFAULT_DTYPE.reset(token)


def resolve_dtype(dtype: str | None) -> str:
    """The matmul operand dtype an op uses: ``dtype``, or the :func:`compute_dtype` default
    ('float32' outside any block) when None."""
    dtype = _DEFAULT_DTYPE.get() if dtype is None else dtype
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {dtype!r} not in {COMPUTE_DTYPES}")
    return dtype


def _offsets(start: int, count: int, step: int, k: int) -> np.ndarray:
    """(count, k) indices start + step*i + d: the k taps of each of ``count`` outputs."""
    return start + step * np.arange(count)[:, None] + np.arange(k)[None, :]


def _window_patches(x: Array, kh: int, kw: int, ho: int, wo: int, a: int = 0, b: int = 0,
                    p: int = 1) -> Array:
    """(N, H, W, C) -> (N, ho, wo, kh*kw*C): patch (r, q) is the kh x kw window of ``x`` at
    (a + p*r, b + p*q), features in HWI order.

    One gather, except for the bf16 bits (uint16, :func:`_patches`), which concatenate the
    kh*kw shifted slices. Both are the same copy; XLA's CPU backend compiles each slice as its
    own fusion (longer LLVM compilation per float32 program; the gather is one fusion), while
    in the bf16 steps the slices ran faster than a 2-byte gather (docs/performance.md)."""
    n, c = x.shape[0], x.shape[-1]
    if x.dtype == jnp.uint16:
        return jnp.concatenate([x[:, a + i:a + i + p * (ho - 1) + 1:p,
                                  b + j:b + j + p * (wo - 1) + 1:p, :]
                                for i in range(kh) for j in range(kw)], axis=-1)
    rows, cols = _offsets(a, ho, p, kh), _offsets(b, wo, p, kw)
    patches = x[:, rows[:, None, :, None], cols[None, :, None, :], :]  # (N, ho, wo, kh, kw, C)
    return patches.reshape(n, ho, wo, kh * kw * c)


def im2col(x: Array, kh: int, kw: int) -> Array:
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) valid patches, features in HWI order (so that an
    HWIO kernel reshaped to (kh*kw*C, O) multiplies them)."""
    return _window_patches(x, kh, kw, x.shape[1] - kh + 1, x.shape[2] - kw + 1)


def im2col_t(x: Array, kh: int, kw: int) -> Array:
    """The transpose of :func:`im2col`, built directly: (kh*kw*C, N*Ho*Wo), rows in HWI order,
    so that a kernel gradient is a plain row-major matmul ``im2col_t(x) @ g``. Only the bf16
    steps use it, so it keeps the slices (:func:`_window_patches`)."""
    n, h, w, c = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    xt = x.transpose(3, 0, 1, 2)  # CNHW: each patch row below is one contiguous block
    p = jnp.concatenate([xt[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)],
                        axis=0)
    return p.reshape(kh * kw * c, n * ho * wo)


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


# Every matmul below takes its operands in the compute dtype and accumulates and returns
# float32 (preferred_element_type): with 'bfloat16' the operands and the patches are half the
# bytes, and CPUs with avx512_bf16 or AMX, and GPUs, multiply them at twice the rate or more.
def _dot(a: Array, b: Array, dims, dtype: str) -> Array:
    cd = _DTYPES[dtype]
    return lax.dot_general(a.astype(cd), b.astype(cd), (dims, ((), ())),
                           preferred_element_type=jnp.float32)


def _matmul(a: Array, b: Array, dtype: str = "float32") -> Array:
    return _dot(a, b, ((a.ndim - 1,), (0,)), dtype)


def _matmul_tn(a: Array, b: Array, dtype: str = "float32") -> Array:
    """a^T b over the leading (row) axis of both: a kernel gradient."""
    return _dot(a, b, ((0,), (0,)), dtype)


def _cast(x: Array, dtype: str) -> Array:
    """``x`` in the compute dtype."""
    return x if dtype == "float32" else x.astype(_DTYPES[dtype])


def _patches(x: Array, kh: int, kw: int, transposed: bool = False) -> Array:
    """:func:`im2col` (rows, kh*kw*C), or :func:`im2col_t` when ``transposed``, in x's dtype.

    XLA's CPU backend widens bf16 copies and concatenations to float32 and narrows the
    result again; on the bits (uint16) they stay pure 2-byte moves."""
    def build(v):
        if transposed:
            return im2col_t(v, kh, kw)
        return im2col(v, kh, kw).reshape(-1, kh * kw * v.shape[-1])

    if x.dtype != jnp.bfloat16:
        return build(x)
    return lax.bitcast_convert_type(build(lax.bitcast_convert_type(x, jnp.uint16)), jnp.bfloat16)


def _matmul_nt(a: Array, b: Array, dtype: str = "float32") -> Array:
    """a b^T over the last axis of both: an input gradient."""
    return _dot(a, b, ((1,), (1,)), dtype)


# Both convolutions below are one matmul each way, with hand-written VJPs: autodiff through
# the patches would build the gradients from many small strided ops, which XLA's CPU backend
# runs far slower than the three large matmuls used here. ``dtype`` is static (a string).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_valid_mm(x: Array, w: Array, dtype: str) -> Array:
    return _conv_valid_mm_fwd(x, w, dtype)[0]


def _conv_valid_mm_fwd(x, w, dtype):
    kh, kw, ci, co = w.shape
    xc = _cast(x, dtype)
    p2 = _patches(xc, kh, kw)
    n, ho, wo = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
    y = _matmul(p2, w.reshape(-1, co), dtype).reshape(n, ho, wo, co)
    # float32: the patches are built once and saved for the kernel gradient (p^T g, a dot
    # that XLA's CPU backend runs as fast as a row-major one). bf16: that dot would run as
    # float32 (Eigen), so the input is saved and the gradient rebuilds the patches transposed.
    return y, ((p2 if dtype == "float32" else xc), w)


def _kernel_grad(saved: Array, g2: Array, kh: int, kw: int, dtype: str) -> Array:
    """dW (kh*kw*C, O) = patches^T g, from the saved patches (float32) or input (bf16)."""
    if dtype == "float32":
        return _matmul_tn(saved, g2, dtype)
    return _matmul(_patches(saved, kh, kw, transposed=True), g2, dtype)


def _conv_valid_mm_bwd(dtype, res, g):
    saved, w = res
    kh, kw, ci, co = w.shape
    n, ho, wo, _ = g.shape
    g2 = g.reshape(-1, co)
    dw = _kernel_grad(saved, g2, kh, kw, dtype).reshape(w.shape)
    dx = col2im(_matmul_nt(g2, w.reshape(-1, co), dtype).reshape(n, ho, wo, -1), kh, kw, ci)
    return dx, dw


_conv_valid_mm.defvjp(_conv_valid_mm_fwd, _conv_valid_mm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_full_tied_mm(h: Array, w: Array, dtype: str) -> Array:
    kh, kw, ci, co = w.shape
    n, ho, wo, _ = h.shape
    cols = _matmul_nt(h.reshape(-1, co), w.reshape(-1, co), dtype)
    return col2im(cols.reshape(n, ho, wo, -1), kh, kw, ci)


def _conv_full_tied_mm_fwd(h, w, dtype):
    return _conv_full_tied_mm(h, w, dtype), (h, w)


def _conv_full_tied_mm_bwd(dtype, res, g):
    h, w = res
    kh, kw, ci, co = w.shape
    gc = _cast(g, dtype)
    p2 = _patches(gc, kh, kw)
    h2 = h.reshape(-1, co)
    dh = _matmul(p2, w.reshape(-1, co), dtype).reshape(h.shape)
    dw = _kernel_grad(p2 if dtype == "float32" else gc, h2, kh, kw, dtype)
    return dh, dw.reshape(w.shape)


_conv_full_tied_mm.defvjp(_conv_full_tied_mm_fwd, _conv_full_tied_mm_bwd)


def strided_im2col(x: Array, kh: int, kw: int, p: int, a: int, b: int) -> Array:
    """The :func:`im2col` rows of the valid output positions (a + p*i, b + p*j) only, i.e. of
    offset (a, b) in every p x p pooling window: (N * Ho/p * Wo/p, kh*kw*C)."""
    hp, wp = (x.shape[1] - kh + 1) // p, (x.shape[2] - kw + 1) // p
    return _window_patches(x, kh, kw, hp, wp, a, b, p).reshape(-1, kh * kw * x.shape[-1])


# A convolution followed by p x p max-pooling, as p*p matmuls, one per position in the pooling
# window, and their elementwise maximum: the same values as pooling the whole convolution, but
# the unpooled output is never written. For one input channel (conv 1) that output is most of
# the layer's memory traffic, so CNN forward passes run faster on the CPU. Training
# (under differentiation) keeps pooling the whole convolution, whose backward pass measured
# faster than one through the p*p matmuls (docs/performance.md).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_pool_mm(x: Array, w: Array, p: int) -> Array:
    kh, kw, _, co = w.shape
    n, hp, wp = x.shape[0], (x.shape[1] - kh + 1) // p, (x.shape[2] - kw + 1) // p
    zs = [_matmul(strided_im2col(x, kh, kw, p, a, b), w.reshape(-1, co))
          for a in range(p) for b in range(p)]
    return functools.reduce(jnp.maximum, zs).reshape(n, hp, wp, co)


def _conv_pool_mm_fwd(x, w, p):
    return jax.vjp(lambda x, w: max_pool(_conv_valid_mm(x, w, "float32"), p), x, w)


def _conv_pool_mm_bwd(p, vjp, g):
    return vjp(g)


_conv_pool_mm.defvjp(_conv_pool_mm_fwd, _conv_pool_mm_bwd)


def _whole_windows(x: Array, w: Array, p: int) -> bool:
    """Whether the valid convolution of ``x`` by ``w`` divides into whole p x p windows."""
    kh, kw = w.shape[:2]
    return (x.shape[1] - kh + 1) % p == 0 and (x.shape[2] - kw + 1) % p == 0


def conv_pool(x: Array, w: Array, p: int, impl: str = "auto", dtype: str | None = None) -> Array:
    """``max_pool(conv_valid(x, w), p)``. When the convolution's output divides into whole
    p x p windows: by Winograd's tiles, which are 2 x 2 pooling windows, where
    :func:`resolve_impl` allows; else, on the float32 patches path, the forward pass outside
    differentiation (evaluation, feature extraction) never writes the unpooled output."""
    dtype = resolve_dtype(dtype)
    whole = _whole_windows(x, w, p)
    if p == winograd.M and whole and _use_winograd(impl, w):
        return winograd.conv_pool2(x, w)
    if p > 1 and whole and dtype == "float32" and _patch_path(impl):
        return _conv_pool_mm(x, w, p)
    return max_pool(conv_valid(x, w, impl, dtype), p)


def conv_pool_activate(x: Array, w: Array, b: Array, name: str, p: int, impl: str = "auto",
                       dtype: str | None = None) -> Array:
    """``max_pool(act(conv_valid(x, w) + b), p)`` computed as ``act(conv_pool(x, w, p) + b)``.

    Every activation of :data:`ACTIVATIONS` is non-decreasing and the bias is one per map, so
    both give the same values, and the gradient still reaches each window's maximum; pooling
    first evaluates the activation (and its gradient) on a p-th squared of the units.
    """
    return activation(name)(conv_pool(x, w, p, impl, dtype) + b)


def matmul(a: Array, b: Array, dtype: str | None = None) -> Array:
    """``a @ b`` (a dense layer) with operands in the compute ``dtype`` (see
    :func:`resolve_dtype`) and a float32 result."""
    return _matmul(a, b, resolve_dtype(dtype))


def _xla_conv(x: Array, w: Array, padding, dtype: str) -> Array:
    cd = _DTYPES[dtype]
    return lax.conv_general_dilated(x.astype(cd), w.astype(cd), (1, 1), padding,
                                    dimension_numbers=_DIMS, preferred_element_type=jnp.float32)


def conv_valid(x: Array, w: Array, impl: str = "auto", dtype: str | None = None) -> Array:
    """Valid 2-D convolution (cross-correlation, as in every DL library), NHWC x HWIO.

    ``dtype`` is the matmul operand dtype (:data:`COMPUTE_DTYPES`; None: the
    :func:`compute_dtype` default, float32), except for the layers Winograd takes, which stay
    float32 (:func:`_use_winograd`); the result is always float32.
    """
    dtype = resolve_dtype(dtype)
    if _use_winograd(impl, w):
        return winograd.conv_valid(x, w)
    if _patch_path(impl):
        return _conv_valid_mm(x, w, dtype)
    return _xla_conv(x, w, "VALID", dtype)


def conv_full_tied(h: Array, w: Array, impl: str = "auto", dtype: str | None = None) -> Array:
    """The paper's tied decoder: a full convolution of ``h`` with ``w`` rotated 180 degrees.

    ``w`` is the encoder's HWIO kernel (in -> out maps); the decoder maps ``out`` back to ``in``,
    so this is exactly the transposed convolution of the encoder, i.e. the VJP of
    :func:`conv_valid` with respect to its input. Output spatial size is input + k - 1.
    ``dtype`` as in :func:`conv_valid`.
    """
    dtype = resolve_dtype(dtype)
    if _use_winograd(impl, w):
        return winograd.conv_transpose(h, w)
    if _patch_path(impl):
        return _conv_full_tied_mm(h, w, dtype)
    k_h, k_w = w.shape[0], w.shape[1]
    w_dec = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # HW(out)(in): rotate 180, swap in/out maps
    return _xla_conv(h, w_dec, ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)), dtype)


def conv_full(h: Array, w_dec: Array, impl: str = "auto", dtype: str | None = None) -> Array:
    """Full convolution with an independent decoder kernel ``w_dec`` (HWIO, hidden -> input);
    ``dtype`` as in :func:`conv_valid`."""
    k_h, k_w = w_dec.shape[0], w_dec.shape[1]
    h = jnp.pad(h, ((0, 0), (k_h - 1, k_h - 1), (k_w - 1, k_w - 1), (0, 0)))
    return conv_valid(h, w_dec, impl, dtype)


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


def _window_slices(x: Array, p: int) -> list[Array]:
    """The p*p strided views of (N, H, W, C), H and W multiples of p: element (a, b) of every
    p x p window, in row-major order of (a, b)."""
    return [x[:, a::p, b::p, :] for a in range(p) for b in range(p)]


def _up(pooled: Array) -> Array:
    """(N, H/p, W/p, C) broadcast over the windows of :func:`_windows`' view."""
    return pooled[:, :, None, :, None, :]


# Pooling is built from elementwise operations on the p*p strided views and on the window view
# of a reshape, with a hand-written gradient: XLA's CPU backend ran the gradient of a max
# reduction over the window axes (location indicators, their counts by a sum reduction, the
# broadcasts back) and the reductions of an explicit mask several times slower than the same
# values computed so (docs/performance.md).
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_whole(x: Array, p: int) -> Array:
    return functools.reduce(jnp.maximum, _window_slices(x, p))


def _max_pool_whole_fwd(x, p):
    top = _max_pool_whole(x, p)
    return top, (x, top)


def _max_pool_whole_bwd(p, res, g):
    x, top = res
    count = functools.reduce(jnp.add, [(v == top).astype(g.dtype) for v in _window_slices(x, p)])
    # Each maximum of a window gets an equal share, as a max reduction's gradient gives it.
    dx = jnp.where(_windows(x, p) == _up(top), _up(g / count), 0.0)
    return (dx.reshape(x.shape),)


_max_pool_whole.defvjp(_max_pool_whole_fwd, _max_pool_whole_bwd)


def max_pool(x: Array, p: int) -> Array:
    """Non-overlapping p x p max-pooling with subsampling; a partial edge window is kept. The
    gradient splits ties equally among a window's maxima."""
    if p == 1:
        return x
    return _max_pool_whole(_pad_to_multiple(x, p, -jnp.inf), p)


def pool_mask(x: Array, p: int) -> Array:
    """True at the first maximum (row-major) of each non-overlapping p x p window of ``x``."""
    h, w = x.shape[1], x.shape[2]
    xp = _pad_to_multiple(x, p, -jnp.inf)
    parts = _window_slices(xp, p)
    first = winograd.first_max_index(parts, _max_pool_whole(xp, p))  # window position a*p + b
    position = jnp.arange(p * p, dtype=jnp.int32).reshape(1, 1, p, 1, p, 1)  # a*p + b
    keep = position == _up(first)  # the window view (N, H/p, p, W/p, p, C)
    return keep.reshape(xp.shape)[:, :h, :w, :]


def pool_sparsify(x: Array, p: int) -> Array:
    """Keeps the maximum of each non-overlapping p x p window and zeroes the rest (the paper's
    max-pooling sparsity): pool followed by unpooling at the argmax, with no subsampling.

    Ties go to the first position of the window in row-major order, so exactly one value per
    window survives. The gradient flows only through the kept values, as for max-pooling.
    """
    if p == 1:
        return x
    return jnp.where(pool_mask(x, p), x, 0.0)


def tied_sparse_pass(x: Array, w: Array, b: Array, name: str, p: int, impl: str = "auto",
                     dtype: str | None = None) -> Array:
    """``conv_full_tied(pool_sparsify(act(conv_valid(x, w) + b), p), w)``: the tied CAE's
    encoder, sparsity and decoder up to the decoder's bias. Where Winograd's 2 x 2 tiles are
    the sparsity windows (p = 2, an even valid output, a convolution :func:`resolve_impl`
    gives to Winograd) the hidden maps stay in the tiles' layout
    (:func:`scae.models.winograd.tied_sparse_pass`); the values are the same."""
    dtype = resolve_dtype(dtype)
    if p == winograd.M and _whole_windows(x, w, p) and _use_winograd(impl, w):
        return winograd.tied_sparse_pass(x, w, b, activation(name))
    h = activation(name)(conv_valid(x, w, impl, dtype) + b)
    return conv_full_tied(pool_sparsify(h, p), w, impl, dtype)


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
