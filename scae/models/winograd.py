"""Winograd's minimal filtering F(2x2, kxk) for the valid convolutions of the paper's layers
and their transposes (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016).

A valid k x k convolution's output is cut into 2 x 2 tiles; each tile is computed from the
(k+1) x (k+1) input window under it as ``A^T [(G w G^T) * (B^T d B)] A``. Over a batch the
elementwise product becomes (k+1)^2 matmuls of (tiles, C_in) x (C_in, C_out): for k = 5, 36
products per 4 outputs instead of 100, for k = 3, 16 instead of 36. The input transform and
its adjoint have hand-written VJPs (each the other) and the output transform is one small
matmul, so the gradients are the same batched matmuls through the adjoint transforms (no
patches, no col2im). The values differ from a direct convolution's by float32 rounding only
(a few 1e-6 of the largest value; tests/test_winograd.py).

Layout is NHWC for activations and HWIO for kernels, as in :mod:`scae.models.ops`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

M = 2  # outputs per tile side

# Toom-Cook points of F(2, k), each set with the point at infinity: small integers keep the
# transforms exact in binary and their rounding error small.
_POINTS = {3: [0, 1, -1], 5: [0, 1, -1, 2, -2]}
KERNELS = tuple(sorted(_POINTS))


@functools.cache
def matrices(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(2, k) at :data:`_POINTS`: (k+1, k+1), (k+1, k), (2, k+1), float64.

    G evaluates the kernel polynomial at the points (with the Lagrange denominators), A^T
    evaluates the output's, and B^T is the unique matrix that makes
    ``A^T [(G g) * (B^T d)]`` the correlation of d (k+1 values) with g (k values)."""
    pts = _POINTS[k]
    n = k + 1
    g = np.zeros((n, k))
    for j, p in enumerate(pts):
        g[j] = [p ** i / np.prod([p - q for q in pts if q != p]) for i in range(k)]
    g[n - 1, k - 1] = 1.0
    at = np.zeros((M, n))
    for j, p in enumerate(pts):
        at[:, j] = [p ** i for i in range(M)]
    at[M - 1, n - 1] = 1.0
    # sum_j at[i, j] g[j, c] bt[j, l] = [l == i + c] for every output i and tap c: a linear
    # system in each column of bt with a unique solution (integers for these points).
    system = np.einsum("ij,jc->icj", at, g).reshape(M * k, n)
    target = np.zeros((M * k, n))
    for i in range(M):
        target[i * k + np.arange(k), i + np.arange(k)] = 1.0
    bt = np.round(np.linalg.lstsq(system, target, rcond=None)[0], 9)
    return bt, g, at


def supports(w_shape: tuple[int, ...]) -> bool:
    """Whether :func:`conv_valid` handles a kernel of this HWIO shape: square, k in
    :data:`KERNELS`."""
    return len(w_shape) == 4 and w_shape[0] == w_shape[1] and w_shape[0] in KERNELS


def _tiles(h: int, w: int, k: int) -> tuple[int, int]:
    """Tiles along H and W covering the (h-k+1, w-k+1) valid output."""
    return -(-(h - k + 1) // M), -(-(w - k + 1) // M)


def _comb(coefs, arrays: list[Array]) -> Array:
    """sum_i coefs[i] * arrays[i], skipping zero coefficients (the transforms are sparse)."""
    out = None
    for c, a in zip(coefs, arrays):
        if c == 0:
            continue
        t = a if c == 1 else -a if c == -1 else a * np.float32(c)
        out = t if out is None else out + t
    return out


def _strided(x: Array, axis: int, n: int, count: int) -> list[Array]:
    """For each start u < n, the ``count`` positions u, u+M, ... of ``axis``."""
    return [lax.slice_in_dim(x, u, u + M * (count - 1) + 1, M, axis) for u in range(n)]


def _placed(ys: list[Array], axis: int) -> Array:
    """The adjoint of :func:`_strided`: ``ys[u]`` put back at positions u, u+M, ... of ``axis``
    and summed. Each output position's parity picks the slices that reach it, so this is a sum
    of plain shifted pads per parity and one interleave (no pads with interior zeros)."""
    n = len(ys)
    shift = -(-n // M)
    parity = []
    for p in range(M):
        parts = []
        for s, y in enumerate(ys[p::M]):
            cfg = [(0, 0)] * y.ndim
            cfg[axis] = (s, shift - 1 - s)
            parts.append(jnp.pad(y, cfg))
        parity.append(functools.reduce(jnp.add, parts))
    shape = list(parity[0].shape)
    shape[axis] *= M
    return jnp.stack(parity, axis=axis + 1).reshape(shape)


def _points(x: Array, k: int, th: int, tw: int) -> list[Array]:
    """(N, M*th+k-1, M*tw+k-1, C) -> (k+1)^2 arrays (N*th*tw, C): B^T d B of every tile's
    window d, point (a, b) at index a*(k+1) + b; columns first, then rows."""
    bt, _, _ = matrices(k)
    n = k + 1
    t = [_comb(bt[b], _strided(x, 2, n, tw)) for b in range(n)]    # (N, H', tw, C) each
    rows = [_strided(t[b], 1, n, th) for b in range(n)]
    return [_comb(bt[a], rows[b]).reshape(-1, x.shape[-1]) for a in range(n) for b in range(n)]


# The input transform and its adjoint are linear maps with hand-written VJPs, each the other's:
# autodiff of the strided slices would pad every slice back to the whole array.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _input_transform(x: Array, k: int, th: int, tw: int) -> Array:
    """:func:`_points` stacked: ((k+1)^2, N*th*tw, C)."""
    return jnp.stack(_points(x, k, th, tw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _input_adjoint(v: Array, k: int, th: int, tw: int) -> Array:
    """The adjoint of :func:`_input_transform`: ((k+1)^2, N*th*tw, C) -> (N, H', W', C), each
    tile's window B dv B^T overlap-added at its place."""
    bt, _, _ = matrices(k)
    n = k + 1
    parts = [p.reshape(-1, th, tw, v.shape[-1]) for p in jnp.split(v, n * n)]
    dt = [_placed([_comb(bt[:, u], parts[b::n]) for u in range(n)], 1) for b in range(n)]
    return _placed([_comb(bt[:, u], dt) for u in range(n)], 2)


_input_transform.defvjp(lambda x, k, th, tw: (_input_transform(x, k, th, tw), None),
                        lambda k, th, tw, _, g: (_input_adjoint(g, k, th, tw),))
_input_adjoint.defvjp(lambda v, k, th, tw: (_input_adjoint(v, k, th, tw), None),
                      lambda k, th, tw, _, g: (_input_transform(g, k, th, tw),))


def _kernel_transform(w: Array) -> Array:
    """(k, k, C, O) -> ((k+1)^2, C, O): G w G^T for every channel pair."""
    _, g, _ = matrices(w.shape[0])
    g = jnp.asarray(g, w.dtype)
    n = g.shape[0]
    return jnp.einsum("ak,bl,klco->abco", g, g, w).reshape(n * n, *w.shape[2:])


def _along0(mat: np.ndarray, x: Array) -> Array:
    """``mat`` (p, q) applied along x's leading axis (of size q): one small matmul, whose
    adjoint (mat^T) is one too."""
    y = lax.dot_general(jnp.asarray(mat, x.dtype), x.reshape(x.shape[0], -1),
                        (((1,), (0,)), ((), ())))
    return y.reshape(mat.shape[0], *x.shape[1:])


def _output_matrix(k: int) -> np.ndarray:
    """(M*M, (k+1)^2): A^T m A of a tile as one matrix over the flattened points."""
    _, _, at = matrices(k)
    return np.kron(at, at)


def _pad_to(x: Array, h: int, w: int) -> Array:
    return jnp.pad(x, ((0, 0), (0, h - x.shape[1]), (0, w - x.shape[2]), (0, 0)))


def _batched(a: Array, b: Array, contract: int) -> Array:
    """(T, R, X) x (T, ., .) -> (T, R, Y): one matmul per transform point, over b's axis
    ``contract`` (1: b is (T, X, Y); 2: b is (T, Y, X), i.e. times its transpose)."""
    return lax.dot_general(a, b, (((2,), (contract,)), ((0,), (0,))))


def _tiled(x: Array, k: int) -> tuple[Array, int, int]:
    th, tw = _tiles(x.shape[1], x.shape[2], k)
    return _pad_to(x, M * th + k - 1, M * tw + k - 1), th, tw


def tile_outputs(x: Array, w: Array) -> Array:
    """The valid convolution as (M, M, N, th, tw, O): output (M*r + i, M*q + j) is
    ``y[i, j, :, r, q]``; positions past the valid output (odd sizes) are padding.

    The points are stacked, so that the matmuls are one batched dot and the output transform
    one small matmul: their gradients are then a few large operations. Differentiable."""
    k = w.shape[0]
    xp, th, tw = _tiled(x, k)
    m = _batched(_input_transform(xp, k, th, tw), _kernel_transform(w), 1)
    return _along0(_output_matrix(k), m).reshape(M, M, x.shape[0], th, tw, w.shape[-1])


def conv_valid(x: Array, w: Array) -> Array:
    """Valid cross-correlation, NHWC x HWIO -> (N, H-k+1, W-k+1, O), by F(2x2, kxk)."""
    k = w.shape[0]
    y = tile_outputs(x, w)
    _, _, n_, th, tw, o = y.shape
    full = y.transpose(2, 3, 0, 4, 1, 5).reshape(n_, M * th, M * tw, o)
    return full[:, :x.shape[1] - k + 1, :x.shape[2] - k + 1]


def _check_even(x: Array, w: Array) -> None:
    """conv_pool2's tiles are its pooling windows only for an even valid output; an odd one
    would pool the padding of the last tiles."""
    k = w.shape[0]
    if (x.shape[1] - k + 1) % M or (x.shape[2] - k + 1) % M:
        raise ValueError(f"conv_pool2 needs an even valid output, got "
                         f"{x.shape[1] - k + 1} x {x.shape[2] - k + 1}")


def _pool2_forward(x: Array, w: Array) -> Array:
    """:func:`conv_pool2`'s value by the fastest forward pass: the points as a list, each one
    fusion feeding its own matmul (XLA's CPU backend copies a stack of many operands slowly),
    and the output transform as sums. Not differentiable at a useful speed."""
    _check_even(x, w)
    k = w.shape[0]
    _, _, at = matrices(k)
    n = k + 1
    xp, th, tw = _tiled(x, k)
    u = _kernel_transform(w)
    m = [vt @ u[t] for t, vt in enumerate(_points(xp, k, th, tw))]
    z = [[_comb(at[j], m[a * n:(a + 1) * n]) for j in range(M)] for a in range(n)]
    y = [_comb(at[i], [z[a][j] for a in range(n)]) for i in range(M) for j in range(M)]
    return functools.reduce(jnp.maximum, y).reshape(x.shape[0], th, tw, -1)


# The gradient of a max reduction over the tiles' four outputs (location indicators, their
# counts by a sum reduction, the broadcasts back) ran several times slower on XLA's CPU backend
# than the same values from elementwise operations on the four (docs/performance.md).
@jax.custom_vjp
def _max_of(xs: list[Array]) -> Array:
    """The elementwise maximum of equally shaped arrays; the maxima share the gradient
    equally, as a max reduction's gradient shares it."""
    return functools.reduce(jnp.maximum, xs)


def _max_of_fwd(xs):
    top = _max_of(xs)
    return top, (xs, top)


def _max_of_bwd(res, g):
    xs, top = res
    hits = [x == top for x in xs]
    share = g / functools.reduce(jnp.add, [hit.astype(g.dtype) for hit in hits])
    return ([jnp.where(hit, share, 0.0) for hit in hits],)


_max_of.defvjp(_max_of_fwd, _max_of_bwd)


@jax.custom_vjp
def conv_pool2(x: Array, w: Array) -> Array:
    """``max_pool(conv_valid(x, w), 2)`` for an even valid output: each tile is one pooling
    window, so the pooled value is the maximum of its four outputs.

    Outside differentiation (evaluation, feature extraction) it runs the list form
    (:func:`_pool2_forward`); under differentiation the stacked one, whose maximum
    (:func:`_max_of`) splits the gradient of ties as ``max_pool``'s does."""
    return _pool2_forward(x, w)


def _pool2_stacked(x: Array, w: Array) -> Array:
    _check_even(x, w)
    y = tile_outputs(x, w)
    y = y.reshape(M * M, *y.shape[2:])
    return _max_of([y[i] for i in range(M * M)])


conv_pool2.defvjp(lambda x, w: jax.vjp(_pool2_stacked, x, w), lambda vjp, g: vjp(g))


def first_max_index(parts: list[Array], top: Array) -> Array:
    """The index of the first of ``parts`` that equals ``top`` (their elementwise maximum), as
    int32: the max-pooling sparsity's winner of each window, ties to the lowest index. One
    where-chain, no reduction (shared with :func:`scae.models.ops.pool_mask`)."""
    first = jnp.full(top.shape, len(parts), jnp.int32)
    for i in reversed(range(len(parts))):
        first = jnp.where(parts[i] == top, i, first)
    return first


def _keep_first_max(h: Array) -> Array:
    """(P, ...) -> ``h`` with every entry but the first maximum along axis 0 set to zero: the
    max-pooling sparsity over windows laid out on the leading axis (ties go to the lowest
    index, as :func:`scae.models.ops.pool_mask`'s row-major order does)."""
    parts = [h[i] for i in range(h.shape[0])]
    first = first_max_index(parts, functools.reduce(jnp.maximum, parts))
    position = jnp.arange(len(parts), dtype=jnp.int32).reshape(-1, *[1] * first.ndim)
    return jnp.where(position == first[None], h, 0.0)


def tied_sparse_pass(x: Array, w: Array, b: Array, act) -> Array:
    """The tied CAE's pass up to the decoder's bias for an even valid output:
    ``conv_transpose(pool_sparsify(act(conv_valid(x, w) + b), 2), w)``.

    Each tile is one 2 x 2 sparsity window, and the decoder's first step lays its input out
    in the same tiles, so the hidden maps stay in that layout: no NHWC re-layout of them
    either way, and the mask is four elementwise slabs (1.11-1.20x the CAE layer-2 step on
    the CPU, docs/performance.md). Differentiable; the gradient reaches the kept units only."""
    _check_even(x, w)
    k = w.shape[0]
    xp, th, tw = _tiled(x, k)
    u = _kernel_transform(w)
    out = _output_matrix(k)
    y = _along0(out, _batched(_input_transform(xp, k, th, tw), u, 1))  # (M*M, tiles, O)
    h = _keep_first_max(act(y + b))
    return _input_adjoint(_batched(_along0(out.T, h), u, 2), k, th, tw)


def conv_transpose(h: Array, w: Array) -> Array:
    """The adjoint of :func:`conv_valid` in its input: (N, Ho, Wo, O) -> (N, Ho+k-1, Wo+k-1, C),
    i.e. the full convolution with the kernel rotated 180 degrees and its maps swapped (the
    CAE's tied decoder): each step of :func:`tile_outputs` transposed, in reverse order."""
    k = w.shape[0]
    n_, ho, wo, o = h.shape
    th, tw = _tiles(ho + k - 1, wo + k - 1, k)
    g = _pad_to(h, M * th, M * tw).reshape(n_, th, M, tw, M, o).transpose(2, 4, 0, 1, 3, 5)
    gm = _along0(_output_matrix(k).T, g.reshape(M * M, -1, o))            # (n*n, R, O)
    dv = _batched(gm, _kernel_transform(w), 2)                             # (n*n, R, C)
    return _input_adjoint(dv, k, th, tw)[:, :ho + k - 1, :wo + k - 1]
