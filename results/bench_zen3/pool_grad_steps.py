"""The training steps with the reduction forms of the pooling (as scae had them) against the
elementwise forms of scae.models.ops / scae.models.winograd, compiled side by side in one process and timed
in alternation (ROUNDS rounds of 3 calls of 5 steps each, batch 128), so that the machine's
drift hits both alike. Prints each step's median img/s and the ratio.

    PYTHONPATH=. python results/bench_zen3/pool_grad_steps.py ROUNDS
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.models import ops
from scae.train import optim
from scae.models import winograd

sys.path.insert(0, "results/bench_zen3")
from pool_grad_pieces import reduce_mask, reduce_pool  # noqa: E402


def old_max_pool(x, p):
    return x if p == 1 else reduce_pool(ops._pad_to_multiple(x, p, -jnp.inf), p)


def old_pool_mask(x, p):
    h, w = x.shape[1:3]
    return reduce_mask(ops._pad_to_multiple(x, p, -jnp.inf), p)[:, :h, :w, :]


def old_max_of(xs):
    return jnp.stack(xs).max(axis=0)


def compiled(workload, arch, layer, steps, batch=128):
    loss_fn, params, data, flop = bm._workload(workload, arch, layer, batch, "auto")
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    key = jax.random.PRNGKey(1)
    run = driver.make_steps(loss_fn, tx, batch, steps)
    args = (params, tx.init(params), data, order, 0, 0, key)
    fn = run.lower(*args).compile()
    return fn, args


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
steps, batch = 5, 128
new = (ops.max_pool, ops.pool_mask, winograd._max_of)
for workload, arch, layer in (("cnn", "mnist", 0), ("cnn", "cifar10", 0), ("cae", "mnist", 1),
                              ("cae", "mnist", 2), ("cae", "cifar10", 1), ("cae", "cifar10", 2)):
    ops.max_pool, ops.pool_mask, winograd._max_of = old_max_pool, old_pool_mask, old_max_of
    before = compiled(workload, arch, layer, steps)
    ops.max_pool, ops.pool_mask, winograd._max_of = new
    after = compiled(workload, arch, layer, steps)
    rates = {"reduction": [], "elementwise": []}
    for _ in range(rounds):
        for name, (fn, args) in (("reduction", before), ("elementwise", after)):
            params, opt_state = jax.tree.map(jnp.copy, args[:2])
            jax.block_until_ready(fn(params, opt_state, *args[2:]))
            for _ in range(3):
                params, opt_state = jax.tree.map(jnp.copy, args[:2])
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, opt_state, *args[2:]))
                rates[name].append(steps * batch / (time.perf_counter() - t0))
    a, b = (statistics.median(rates[k]) for k in ("reduction", "elementwise"))
    print(f"{arch:8s} {workload} {layer or '':1}  reduction {a:7.1f} img/s  elementwise {b:7.1f}"
          f" img/s  x{b / a:.3f}", flush=True)
