"""Where the evaluation's forward pass spends its time: the MNIST paper CNN evaluated as
``finetuning.error_fn`` runs it (3 vmapped seeds, ``EVAL_BATCH`` images at once), and the
prefixes of the same pass (conv 1; conv 1-2; conv 1-3), each its own program over the same
3000 images. Medians of ROUNDS interleaved rounds, seed-images/s and ms per 1000 seed-images.

    python results/bench_zen3/eval_parts.py [ROUNDS]
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.study import finetune as finetuning
from scae.models import modules as models

S, N = 3, 3000
spec = models.CNNSpec.from_config(cfglib.base_config("mnist").model, (28, 28, 1))
nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(S)]
graphdef, _ = models.split(nets[0])
params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
x = jax.random.uniform(jax.random.PRNGKey(0), (N, 28, 28, 1))
y = jnp.asarray(np.random.RandomState(1).randint(0, 10, N))
batch = max(1, finetuning.EVAL_BATCH // S)


def prefix(layers):
    def per_seed(q, images):
        m = models.merge(graphdef, q)

        def fwd(v):
            for conv, p in list(zip(m.convs, spec.pool_sizes))[:layers]:
                v = conv.pooled(v, spec.activation, p)
            return v.sum(axis=(1, 2, 3))  # a small output: the pass, not its write-back

        return driver.batched_apply(fwd, images, batch).sum()

    return jax.jit(jax.vmap(per_seed, in_axes=(0, None)))


cases = {f"conv 1-{k}": (prefix(k), (params, x)) for k in (1, 2, 3)}
cases["errors (as run)"] = (jax.jit(jax.vmap(finetuning.error_fn(graphdef, S),
                                             in_axes=(0, None, None))), (params, x, y))
compiled = {k: f.lower(*a).compile() for k, (f, a) in cases.items()}
times = {k: [] for k in cases}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
print(bm.machine(4096, "float32"), flush=True)
for k, c in compiled.items():
    jax.block_until_ready(c(*cases[k][1]))
for _ in range(rounds):
    for k, c in compiled.items():
        t = time.perf_counter()
        jax.block_until_ready(c(*cases[k][1]))
        times[k].append(time.perf_counter() - t)
for k, ts in times.items():
    med = float(np.median(ts))
    print(f"{k:16s} {S * N / med:7.0f} seed-img/s  {1000 * med / (S * N) * 1000:6.1f} ms "
          f"per 1000  rounds {[round(1000 * t) for t in ts]} ms", flush=True)
