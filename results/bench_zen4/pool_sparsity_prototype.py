"""The tied decoder of CAE layer 2 (MNIST size: 8x8x150 hidden maps -> 12x12x100, 5x5 kernel)
exploiting the max-pooling sparsity, against the dense decoder the step runs.

After the sparsity each hidden map keeps one unit of every 2x2 window, at a position of its
own, so no row or column of the decoder's GEMM is zero and a dense product skips nothing. The
sparse form multiplies only the kept units (a quarter of the multiply-adds): each kept unit
scales its map's 5x5x100 kernel slab, and the slabs are summed into the output at the unit's
position (a scatter-add, `jax.ops.segment_sum`), over chunks of 10 maps to bound memory.
Prints the ms per image of both forms at batch N (inside one jitted call each, best of 5),
and checks that they agree.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_zen4/pool_sparsity_prototype.py [N]
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from pipelines.benchmark import best_seconds
from scae.models import ops

N = int(sys.argv[1]) if len(sys.argv) > 1 else 32
HID, C, CIN, K, P, CHUNK = 8, 150, 100, 5, 2, 10
OUT = HID + K - 1


def dense(h, w):
    return ops.conv_full_tied(h, w)


def sparse(pooled, offset, w):
    """pooled, offset: (N, 4, 4, C) kept values and their window positions (0..3)."""
    n = pooled.shape[0]
    py, px = jnp.meshgrid(jnp.arange(HID // P), jnp.arange(HID // P), indexing="ij")
    y = P * py[None, :, :, None] + offset // P                      # (N, 4, 4, C)
    x = P * px[None, :, :, None] + offset % P
    i, j = jnp.meshgrid(jnp.arange(K), jnp.arange(K), indexing="ij")
    img = jnp.arange(n)[:, None, None, None]
    # Output pixel of every (unit, tap): (N, 4, 4, C, K, K).
    target = (img * OUT * OUT)[..., None, None] + (y[..., None, None] + i) * OUT + (x[..., None, None] + j)

    def chunk(acc, c0):
        v = jax.lax.dynamic_slice_in_dim(pooled, c0, CHUNK, 3)        # (N, 4, 4, CHUNK)
        t = jax.lax.dynamic_slice_in_dim(target, c0, CHUNK, 3)        # (N, 4, 4, CHUNK, K, K)
        wc = jax.lax.dynamic_slice_in_dim(w, c0, CHUNK, 3)            # (K, K, CIN, CHUNK)
        slabs = v[..., None, None, None] * jnp.moveaxis(wc, 3, 0)     # (N, 4, 4, CHUNK, K, K, CIN)
        acc += jax.ops.segment_sum(slabs.reshape(-1, CIN), t.reshape(-1), n * OUT * OUT)
        return acc, None

    out, _ = jax.lax.scan(chunk, jnp.zeros((n * OUT * OUT, CIN)), jnp.arange(0, C, CHUNK))
    return out.reshape(n, OUT, OUT, CIN)


def main():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    z = jax.random.normal(k1, (N, HID, HID, C))
    w = jax.random.normal(k2, (K, K, CIN, C)) * 0.05
    h = ops.pool_sparsify(z, P)                                       # dense, 3/4 zeros
    win = z.reshape(N, HID // P, P, HID // P, P, C).transpose(0, 1, 3, 5, 2, 4).reshape(
        N, HID // P, HID // P, C, P * P)
    offset, pooled = jnp.argmax(win, -1), jnp.max(win, -1)
    d = jax.jit(dense)
    s = jax.jit(sparse)
    ref = d(h, w)
    err = float(jnp.max(jnp.abs(ref - s(pooled, offset, w))) / jnp.max(jnp.abs(ref)))
    td, ts = best_seconds(d, h, w), best_seconds(s, pooled, offset, w)
    mac = lambda units: units * K * K * CIN
    print(f"batch {N}: dense decoder {td / N * 1e3:.3f} ms/image ({mac(HID * HID * C) / 1e6:.1f} M "
          f"multiply-adds), sparse {ts / N * 1e3:.3f} ms/image ({mac(HID * HID * C // P**2) / 1e6:.1f} M); "
          f"sparse/dense time x{ts / td:.1f}; max relative difference {err:.1e}", flush=True)
    np.testing.assert_array_less(err, 1e-4)


if __name__ == "__main__":
    main()
