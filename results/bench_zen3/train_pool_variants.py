"""The CNN training step (MNIST size; batch 128 x 1 seed and 64 x 3 vmapped seeds) with the
pooled convolutions trained through a custom VJP over one matmul per pooling-window position
("custom all"; "custom conv1": the first layer only), against pooling the whole convolution
(as the library trains). img/s, median of ROUNDS interleaved rounds.

    python results/bench_zen3/train_pool_variants.py [ROUNDS]
"""
import functools, sys, time
import jax, jax.numpy as jnp, numpy as np
from scae import config as cfglib
from scae.models import ops
from scae.train import driver
from scae.train import optim
from pipelines import benchmark as bm

def make_custom(first_only):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def cp(x, w, p):
        return fwd(x, w, p)[0]
    def fwd(x, w, p):
        kh, kw, _, co = w.shape
        n, hp, wp = x.shape[0], (x.shape[1] - kh + 1) // p, (x.shape[2] - kw + 1) // p
        patches = [ops.strided_im2col(x, kh, kw, p, a, b) for a in range(p) for b in range(p)]
        zs = [ops._matmul(q, w.reshape(-1, co)) for q in patches]
        z = functools.reduce(jnp.maximum, zs)
        ties = [zi == z for zi in zs]
        return z.reshape(n, hp, wp, co), (patches, ties, w)
    def bwd(p, res, g):
        patches, ties, w = res
        kh, kw, ci, co = w.shape
        n, hp, wp, _ = g.shape
        g2 = g.reshape(-1, co)
        count = functools.reduce(jnp.add, [t.astype(g.dtype) for t in ties])
        gs = [jnp.where(t, g2 / count, 0.0) for t in ties]
        dw = functools.reduce(jnp.add, [ops._matmul_tn(q, gi) for q, gi in zip(patches, gs)])
        g_full = (jnp.stack(gs).reshape(p, p, n, hp, wp, co).transpose(2, 3, 0, 4, 1, 5).reshape(-1, co))
        dx = ops.col2im(ops._matmul_nt(g_full, w.reshape(-1, co)).reshape(n, hp * p, wp * p, -1), kh, kw, ci)
        return dx, dw.reshape(w.shape)
    cp.defvjp(fwd, bwd)
    orig = ops.conv_pool
    def conv_pool(x, w, p, impl="auto", dtype=None):
        if p > 1 and (not first_only or w.shape[2] <= 3):
            return cp(x, w, p)
        return orig(x, w, p, impl, dtype)
    return conv_pool

ORIG = ops.conv_pool
VARIANTS = {"current": ORIG, "custom all": make_custom(False), "custom conv1": make_custom(True)}

def step_fn(arch, variant, batch, seeds, steps=10):
    ops.conv_pool = VARIANTS[variant]
    loss_fn, params, data, flop = bm._workload("cnn", arch, 1, batch, "auto")
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    key = jax.random.PRNGKey(1)
    if seeds > 1:
        params = jax.tree.map(lambda x: jnp.stack([x] * seeds), params)
        opt = jax.vmap(tx.init)(params); order = jnp.stack([order] * seeds); key = jax.random.split(key, seeds)
    else:
        opt = tx.init(params)
    state = [params, opt]
    rest = (data, order, 0, 0, key)
    compiled = driver.make_steps(loss_fn, tx, batch, steps, seeds=seeds > 1).lower(*state, *rest).compile()
    ops.conv_pool = ORIG
    def run():
        state[0], state[1], losses = compiled(*state, *rest)
        losses.block_until_ready()
    return run, batch * steps * seeds

cases = {}
for arch, batch, seeds in [("mnist", 128, 1), ("mnist", 64, 3)]:
    for v in VARIANTS:
        cases[(arch, batch, seeds, v)] = step_fn(arch, v, batch, seeds)
for run, _ in cases.values(): run()
times = {k: [] for k in cases}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for k, (run, n) in cases.items():
        t = time.perf_counter(); run(); times[k].append(n / (time.perf_counter() - t))
for k, t in times.items():
    print(k, "img/s median", int(np.median(t)), [int(v) for v in t], flush=True)
