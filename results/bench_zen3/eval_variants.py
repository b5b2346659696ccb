"""Evaluation of 3 vmapped CNNs on 1000 MNIST-sized images, seed-images/s (median of 5
interleaved rounds), per variant BATCH:KIND: vmap (the seeds vmapped, BATCH images per seed),
seq (the seeds one after another), shift (conv 2 as 25 shifted K=100 matmuls), xla (conv 2 as
XLA's convolution).

    python results/bench_zen3/eval_variants.py 85:vmap 32:vmap 256:seq 85:shift 85:xla
"""
import sys, time, functools
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from flax import nnx
from scae.models import modules as models
from scae.models import ops
from scae.train import driver

spec = models.CNNSpec(image_shape=(28, 28, 1))
S = 3
nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(S)]
graphdef, _ = models.split(nets[0])
params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
x = jnp.asarray(np.random.RandomState(0).rand(1000, 28, 28, 1).astype(np.float32))
y = jnp.asarray(np.random.RandomState(1).randint(0, 10, 1000))

def shifted_conv(x, w):
    kh, kw, ci, co = w.shape
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            t = jnp.einsum('nhwc,co->nhwo', x[:, i:i+ho, j:j+wo, :], w[i, j])
            out = t if out is None else out + t
    return out

def make(batch, variant):
    def fwd(q, xb):
        m = models.merge(graphdef, q)
        h = xb
        for k, (conv, p) in enumerate(zip(m.convs, spec.pool_sizes)):
            w = conv.w[...]
            if variant == 'shift' and k == 1:
                z = shifted_conv(h, w)
            elif variant == 'xla' and k == 1:
                z = ops._xla_conv(h, w, 'VALID', 'float32')
            else:
                z = ops.conv_valid(h, w, 'matmul')
            h = ops.activation(spec.activation)(ops.max_pool(z, p) + conv.b[...])
        return m.head(h.reshape(h.shape[0], -1))
    def errs(q, images, labels):
        logits = driver.batched_apply(lambda v: fwd(q, v), images, batch)
        return 100.0 * jnp.mean(jnp.argmax(logits, -1) != labels)
    if variant == 'seq':
        f = lambda P, X, Y: lax.map(lambda q: errs(q, X, Y), P)
    else:
        f = jax.vmap(errs, in_axes=(0, None, None))
    return jax.jit(f)

variants = [(int(b), v) for b, v in (a.split(':') for a in sys.argv[1:])]
fns = {k: make(*k) for k in variants}
ref = None
for k, f in fns.items():
    r = np.asarray(f(params, x, y))
    print(k, r, flush=True)
times = {k: [] for k in fns}
for rnd in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); f(params, x, y).block_until_ready(); times[k].append(time.perf_counter() - t)
for k, t in times.items():
    print(k, 'img/s (seed-images)', round(S * 1000 / np.median(t)), [round(S*1000/v) for v in t])
