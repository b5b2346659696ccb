"""Forward conv + 2x2 max-pool of 256 images, ms (lax.map over 12 batches, median of 5
interleaved rounds): pooling the whole convolution, one matmul over the stacked window
positions, one matmul per position. Layer 1 (28x28x1 -> 100 maps) or 2 (12x12x100 -> 150).

    python results/bench_zen3/forward_pool_variants.py 1|2
"""
import time, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from scae.models import ops
B = 256
r = np.random.RandomState(0)
def strided_patches(v, k, p):
    n, h, w, c = v.shape
    ho, wo = h - k + 1, w - k + 1
    hp, wp = ho // p, wo // p
    out = []
    for a in range(p):
        for b in range(p):
            cols = [v[:, a+i:a+i+p*(hp-1)+1:p, b+j:b+j+p*(wp-1)+1:p, :] for i in range(k) for j in range(k)]
            out.append(jnp.concatenate(cols, -1).reshape(-1, k*k*c))
    return out, (n, hp, wp)
def pm_one(v, w, b, p=2):
    k, _, c, o = w.shape
    ps, (n, hp, wp) = strided_patches(v, k, p)
    P = jnp.stack(ps)   # p2, M, K
    z = (P.reshape(-1, k*k*c) @ w.reshape(-1, o)).reshape(p*p, -1, o).max(0)
    return ops.scaled_tanh(z.reshape(n, hp, wp, o) + b)
def pm_four(v, w, b, p=2):
    k, _, c, o = w.shape
    ps, (n, hp, wp) = strided_patches(v, k, p)
    zs = [q @ w.reshape(-1, o) for q in ps]
    z = zs[0]
    for t in zs[1:]: z = jnp.maximum(z, t)
    return ops.scaled_tanh(z.reshape(n, hp, wp, o) + b)
def cur(v, w, b, p=2): return ops.scaled_tanh(ops.max_pool(ops.conv_valid(v, w, 'matmul'), p) + b)
layer = sys.argv[1]
if layer == '1':
    x = jnp.asarray(r.rand(12, B, 28, 28, 1).astype(np.float32)); w = jnp.asarray(r.randn(5,5,1,100).astype(np.float32)*.1); bb = jnp.zeros(100)
else:
    x = jnp.asarray(r.rand(12, B, 12, 12, 100).astype(np.float32)); w = jnp.asarray(r.randn(5,5,100,150).astype(np.float32)*.02); bb = jnp.zeros(150)
fs = {'pool whole conv': cur, 'pm one gemm': pm_one, 'pm four gemms': pm_four}
ref = np.asarray(jax.jit(cur)(x[0], w, bb))
for k, f in fs.items(): print(k, np.abs(np.asarray(jax.jit(f)(x[0], w, bb)) - ref).max())
fs = {k: jax.jit(lambda X, f=f: lax.map(lambda v: f(v, w, bb).sum(), X)) for k, f in fs.items()}
for k, f in fs.items(): f(x).block_until_ready()
ts = {k: [] for k in fs}
for _ in range(5):
    for k, f in fs.items():
        t = time.perf_counter(); f(x).block_until_ready(); ts[k].append((time.perf_counter()-t)/12*1000)
for k, t in ts.items(): print(f'{k:14s} ms per {B} images: {np.median(t):.1f}  {[round(v,1) for v in t]}')
