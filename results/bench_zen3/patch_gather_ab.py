"""A training step (batch 128, 10 steps per call) or, with WORKLOAD eval, the evaluation
forward pass (3 vmapped seeds x 3000 images, as ``finetuning.error_fn`` runs it), with patches
as concatenated slices or as one gather, both compiled in one process and run interleaved,
ROUNDS rounds (the first dropped): img/s.

    python results/bench_zen3/patch_gather_ab.py ARCH WORKLOAD LAYER ROUNDS
"""
import sys, time, json, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "results/bench_zen3")
from patch_gather import slices_im2col, slices_strided_im2col
from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.models import ops
from scae.train import optim
G = (ops.im2col, ops.strided_im2col)
arch, workload, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch, steps = 128, 10
progs = {}
for v in ("slices", "gather"):
    ops.im2col, ops.strided_im2col = (slices_im2col, slices_strided_im2col) if v == "slices" else G
    if workload == "eval":
        from flax import nnx
        from scae.study import finetune as finetuning
        from scae.models import modules as models
        spec = models.CNNSpec.from_config(cfglib.base_config(arch).model, bm.IMAGE_SHAPES[arch])
        nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(3)]
        graphdef, _ = models.split(nets[0])
        params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
        x = jax.random.uniform(jax.random.PRNGKey(0), (3000,) + bm.IMAGE_SHAPES[arch])
        y = jnp.asarray(np.random.RandomState(1).randint(0, 10, 3000))
        f = jax.jit(jax.vmap(finetuning.error_fn(graphdef, 3), in_axes=(0, None, None)))
        progs[v] = (f.lower(params, x, y).compile(), (params, x, y))
        continue
    loss_fn, params, data, _ = bm._workload(workload, arch, layer, batch, "auto", "float32")
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch); key = jax.random.PRNGKey(1)
    state = [params, tx.init(params)]
    c = driver.make_steps(loss_fn, tx, batch, steps).lower(*state, data, order, 0, 0, key).compile()

    def run(c=c, state=state, rest=(data, order, 0, 0, key)):
        state[0], state[1], losses = c(*state, *rest)
        return losses
    progs[v] = (run, ())
images = 9000 if workload == "eval" else batch * steps
ts = {v: [] for v in progs}
for r in range(int(sys.argv[4])):
    for v, (c, args) in progs.items():
        t = time.perf_counter(); jax.block_until_ready(c(*args)); ts[v].append(time.perf_counter() - t)
for v, t in ts.items():
    print(arch, workload, layer, v, "median img/s", round(images / np.median(t[1:])), [round(images / x) for x in t[1:]])
