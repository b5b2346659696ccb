"""Interleaved A/B in one process: the CNN training step and its evaluation forward pass with
``ops.conv_pool`` (one matmul per pooling-window position) against pooling the whole
convolution (the fallback path), MNIST and CIFAR-10 sizes, batch 128, 10 steps per call.

    python results/bench_zen3/ab_conv_pool.py [ROUNDS]
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.models import modules as models
from scae.models import ops
from scae.train import optim

FAST = ops.conv_pool
SLOW = lambda x, w, p, impl="auto", dtype=None: ops.max_pool(ops.conv_valid(x, w, impl, dtype), p)


def step_fn(arch, variant, batch=128, steps=10):
    ops.conv_pool = FAST if variant == "conv_pool" else SLOW
    loss_fn, params, data, flop = bm._workload("cnn", arch, 1, batch, "auto")
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    state = [params, tx.init(params)]
    rest = (data, order, 0, 0, jax.random.PRNGKey(1))
    compiled = driver.make_steps(loss_fn, tx, batch, steps).lower(*state, *rest).compile()
    ops.conv_pool = FAST

    def run():  # the step donates its parameters and optimizer state: carry them on
        state[0], state[1], losses = compiled(*state, *rest)
        losses.block_until_ready()

    return run, batch * steps, flop


def eval_fn(arch, variant, n=1024, batch=256):
    ops.conv_pool = FAST if variant == "conv_pool" else SLOW
    shape = bm.IMAGE_SHAPES[arch]
    spec = models.CNNSpec.from_config(cfglib.base_config(arch).model, shape)
    graphdef, params = models.split(models.CNN(spec, rngs=__import__("flax").nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.PRNGKey(0), (n,) + shape)
    f = jax.jit(lambda q, x: driver.batched_apply(models.merge(graphdef, q), x, batch))
    compiled = f.lower(params, x).compile()
    ops.conv_pool = FAST
    return lambda: compiled(params, x).block_until_ready(), n, None


def main(rounds=5):
    print(bm.machine(4096, "float32"), flush=True)
    cases = {(kind, arch, v): make(arch, v) for kind, make in (("train", step_fn), ("eval", eval_fn))
             for arch in ("mnist", "cifar10") for v in ("pool_whole_conv", "conv_pool")}
    for run, _, _ in cases.values():
        run()
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (run, _, _) in cases.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    for k, (run, imgs, _) in cases.items():
        rates = [round(imgs / t) for t in times[k]]
        print(" ".join(k), "img/s median", int(np.median(rates)), "rounds", rates, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
