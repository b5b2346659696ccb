"""Winograd's input transform (conv 2 / CAE layer 2, 128 images of 12x12 and 14x14 x 100 maps, 5x5)
three ways: as it is (two separable stages of strided slices, 36 stacked points), and as one
gather of the 6x6 tile windows followed by one GEMM by the 36x36 matrix B^T (x) B^T, with the
windows gathered batch-first or point-first; ms, best of 9 isolated calls, and the largest
difference from the current transform.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_xeon/input_transform_variants.py
"""
import numpy as np, jax, jax.numpy as jnp
from jax import lax
from pipelines.benchmark import best_seconds
from scae.models import winograd as wg
def timeit(f, *a):
    return best_seconds(f, *a, repeats=9) * 1e3
def gemm_transform(x, k, th, tw):
    bt, _, _ = wg.matrices(k); n = k + 1
    rows = (2 * np.arange(th))[None, :] + np.arange(n)[:, None]  # (n, th)
    cols = (2 * np.arange(tw))[None, :] + np.arange(n)[:, None]
    X = x[:, rows[:, None, :, None], cols[None, :, None, :], :]   # (N, n, n, th, tw, C)
    C = np.einsum("ai,bj->abij", bt, bt).reshape(n * n, n * n).astype(np.float32)
    X = X.transpose(1, 2, 0, 3, 4, 5).reshape(n * n, -1)
    return (jnp.asarray(C) @ X).reshape(n * n, -1, x.shape[-1])
def gemm_transform2(x, k, th, tw):
    # gather with (i,j) leading directly
    bt, _, _ = wg.matrices(k); n = k + 1
    N, H, W, Cc = x.shape
    xt = x.transpose(1, 2, 0, 3)  # (H, W, N, C)
    rows = (2 * np.arange(th))[None, :] + np.arange(n)[:, None]
    cols = (2 * np.arange(tw))[None, :] + np.arange(n)[:, None]
    X = xt[rows[:, None, :, None], cols[None, :, None, :]]  # (n, n, th, tw, N, C)
    C = np.einsum("ai,bj->abij", bt, bt).reshape(n * n, n * n).astype(np.float32)
    V = (jnp.asarray(C) @ X.reshape(n * n, -1)).reshape(n * n, th, tw, N, Cc)
    return V.transpose(0, 3, 1, 2, 4).reshape(n * n, -1, Cc)
for (N, H, C) in [(128, 12, 100), (128, 14, 100)]:
    x = jax.random.normal(jax.random.PRNGKey(0), (N, H, H, C))
    th = tw = (H - 5 + 1) // 2
    ref = wg._input_transform(x, 5, th, tw)
    for name, f in [("as is", lambda x: wg._input_transform(x, 5, th, tw)), ("gather+gemm", lambda x: gemm_transform(x, 5, th, tw)), ("gather2+gemm", lambda x: gemm_transform2(x, 5, th, tw))]:
        jf = jax.jit(f); y = jf(x)
        print(H, f"{name:14s} {timeit(jf, x):6.2f} ms  max err {float(jnp.abs(y-ref).max()):.1e}")
