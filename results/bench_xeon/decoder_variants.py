"""The tied decoder (full 5x5 convolution of 128 hidden maps of 8x8 or 10x10 x 150 back to 100 maps,
the CAE layer-2 shapes of MNIST and CIFAR-10) in bf16 four ways, against fp32: the patches
path as it is (fp32 cols, col2im), its product written in bf16 then col2im in fp32 or in
bf16, and a valid convolution over the padded maps' patches (K = 3750, no col2im); ms, best
of 7 isolated calls, and rms error relative to the fp32 patches path.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_xeon/decoder_variants.py
"""
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from pipelines.benchmark import best_seconds
from scae.models import ops
bf = jnp.bfloat16
def timeit(f, *a):
    return best_seconds(f, *a, repeats=7) * 1e3
def cur(h, w): return ops._conv_full_tied_mm(h, w, "bfloat16")
def cols_bf16(h, w):
    kh, kw, ci, co = w.shape; n, ho, wo, _ = h.shape
    cols = lax.dot_general(h.reshape(-1, co).astype(bf), w.reshape(-1, co).astype(bf), (((1,),(1,)),((),())), preferred_element_type=bf)
    return ops.col2im(cols.reshape(n, ho, wo, -1).astype(jnp.float32), kh, kw, ci)
def cols_bf16_sum_bf(h, w):
    kh, kw, ci, co = w.shape; n, ho, wo, _ = h.shape
    cols = lax.dot_general(h.reshape(-1, co).astype(bf), w.reshape(-1, co).astype(bf), (((1,),(1,)),((),())), preferred_element_type=bf)
    return ops.col2im(cols.reshape(n, ho, wo, -1), kh, kw, ci).astype(jnp.float32)
def padded(h, w):
    kh, kw, ci, co = w.shape
    hp = jnp.pad(h.astype(bf), ((0,0),(kh-1,kh-1),(kw-1,kw-1),(0,0)))
    wf = w[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh,kw,co,ci)
    p = ops._patches(hp, kh, kw)
    n, H, W = h.shape[0], h.shape[1]+kh-1, h.shape[2]+kw-1
    return ops._matmul(p, wf.reshape(-1, ci), "bfloat16").reshape(n, H, W, ci)
for hw in (8, 10):
    h = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (128, hw, hw, 150)))
    w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 100, 150)) / 50
    ref = ops._conv_full_tied_mm(h, w, "float32")
    for name, f in [("cur", cur), ("cols bf16", cols_bf16), ("cols bf16 sum bf16", cols_bf16_sum_bf), ("padded patches", padded)]:
        y = jax.jit(f)(h, w); err = float(jnp.sqrt(jnp.mean((y-ref)**2)/jnp.mean(ref**2)))
        print(hw, f"{name:20s} {timeit(jax.jit(f), h, w):6.1f} ms  rel rms err {err:.1e}")
    print(hw, f"{'fp32 cur':20s} {timeit(jax.jit(lambda h,w: ops._conv_full_tied_mm(h,w,'float32')), h, w):6.1f} ms")
    from scae.models import winograd
    print(hw, f"{'fp32 winograd':20s} {timeit(jax.jit(winograd.conv_transpose), h, w):6.1f} ms")
