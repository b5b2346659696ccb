"""Conv 2 of the paper's CNN and the CAE's layer 2 at MNIST (12 x 12 x 100 inputs) and
CIFAR-10 size (14 x 14 x 100), 128 images: the pooled forward pass (Winograd: the list form used outside differentiation, and the
stacked form that is differentiated), its gradient, and the
CAE layer-2 loss with its gradient, by patches x kernel (ops, conv_impl=matmul) and by
scae.models.winograd. Compile time of the first call and the median of 7 calls, two rounds.

    python results/bench_zen3/winograd_pieces.py
"""
import time, sys, numpy as np, jax, jax.numpy as jnp
from scae.models import winograd as wg
from scae.models import ops
B = 128
def timeit(f, *a, rounds=7):
    t=time.perf_counter(); jax.block_until_ready(f(*a)); c=time.perf_counter()-t
    ts=[]
    for _ in range(rounds):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    return c, np.median(ts)
for name, hw in [("mnist", 12), ("cifar", 14)]:
    x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (B, hw, hw, 100)))
    w = jax.random.normal(jax.random.PRNGKey(1), (5,5,100,150))/50
    r = jax.random.normal(jax.random.PRNGKey(2), (B, (hw-4)//2, (hw-4)//2, 150))
    cases = {
      "fwd conv_pool mm": jax.jit(lambda x,w: ops.conv_pool(x,w,2,"matmul")),
      "fwd conv_pool wino": jax.jit(lambda x,w: wg.conv_pool2(x,w)),
      "fwd wino stacked": jax.jit(lambda x,w: wg._pool2_stacked(x,w)),
      "train conv_pool mm": jax.jit(jax.grad(lambda x,w: jnp.sum(ops.conv_pool(x,w,2,"matmul")*r),(0,1))),
      "train conv_pool wino": jax.jit(jax.grad(lambda x,w: jnp.sum(wg.conv_pool2(x,w)*r),(0,1))),
    }
    def cae(conv, convt):
        def loss(w):
            h = ops.pool_sparsify(jnp.tanh(conv(x, w)), 2)
            return jnp.mean((jnp.tanh(convt(h, w)) - x) ** 2)
        return jax.jit(jax.value_and_grad(loss))
    cases["cae2 mm"] = cae(lambda x,w: ops.conv_valid(x,w,"matmul"), lambda h,w: ops.conv_full_tied(h,w,"matmul"))
    cases["cae2 wino"] = cae(wg.conv_valid, wg.conv_transpose)
    res = {}
    for rnd in range(2):
        for k, f in cases.items():
            args = (w,) if k.startswith("cae") else (x, w)
            c, t = timeit(f, *args)
            res.setdefault(k, []).append((c, t))
    for k, v in res.items():
        print(f"{name} {k:22s} compile {v[0][0]:.2f}s  median {[round(1000*float(t),1) for _,t in v]} ms per {B}", flush=True)
