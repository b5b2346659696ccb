"""The CAE layer-2 step with its hidden maps in Winograd's tile layout
(scae.winograd.tied_sparse_pass) against the three steps it replaces (encoder conv, NHWC
re-layout, pool_sparsify, decoder conv), compiled side by side in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128). Prints the medians and each
round's ratio, so that the machine's drift hits both alike.

    PYTHONPATH=. python results/bench_zen3/tied_tile_ab.py ROUNDS
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from pipelines import benchmark as bm
from scae import config as cfglib, driver, ops, optim, winograd


def three_steps(x, w, b, act):
    h = act(winograd.conv_valid(x, w) + b)
    return winograd.conv_transpose(ops.pool_sparsify(h, 2), w)


def compiled(arch, steps, batch=128):
    loss_fn, params, data, _ = bm._workload("cae", arch, 2, batch, "auto")
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    run = driver.make_steps(loss_fn, tx, batch, steps)
    args = (params, tx.init(params), data, order, 0, 0, jax.random.PRNGKey(1))
    return run.lower(*args).compile(), args


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
steps, batch = 5, 128
tiles = winograd.tied_sparse_pass
for arch in ("mnist", "cifar10"):
    winograd.tied_sparse_pass = three_steps
    variants = {"three steps": compiled(arch, steps)}
    winograd.tied_sparse_pass = tiles
    variants["tile layout"] = compiled(arch, steps)
    rates = {k: [] for k in variants}
    for _ in range(rounds):
        for name, (fn, args) in variants.items():
            params, opt_state = jax.tree.map(jnp.copy, args[:2])
            jax.block_until_ready(fn(params, opt_state, *args[2:]))
            per_call = []
            for _ in range(3):
                params, opt_state = jax.tree.map(jnp.copy, args[:2])
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, opt_state, *args[2:]))
                per_call.append(steps * batch / (time.perf_counter() - t0))
            rates[name].append(statistics.median(per_call))
    a, b = rates["three steps"], rates["tile layout"]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{arch:8s} cae 2  three steps {statistics.median(a):6.1f} img/s  tile layout "
          f"{statistics.median(b):6.1f} img/s  x{statistics.median(ratios):.3f} (rounds: "
          + " ".join(f"{r:.2f}" for r in ratios) + ")", flush=True)
