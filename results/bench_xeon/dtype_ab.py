"""fp32 against bf16 matmul operands (config.model.compute_dtype), every training step of
pipelines.benchmark at both sizes, compiled side by side in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128), so that the machine's drift
hits both alike. Prints the fp32 and bf16 matmul peaks (4096^2), then per step the medians,
the bf16/fp32 ratio and each round's ratio.

    PYTHONPATH=. python results/bench_xeon/dtype_ab.py ROUNDS
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from pipelines import benchmark as bm
from scae import config as cfglib, driver, ops, optim


def compiled(workload, arch, layer, dtype, steps, batch=128):
    loss_fn, params, data, flop = bm._workload(workload, arch, layer, batch, "auto", dtype)
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    run = driver.make_steps(loss_fn, tx, batch, steps)
    args = (params, tx.init(params), data, order, 0, 0, jax.random.PRNGKey(1))
    with ops.compute_dtype(dtype):
        return run.lower(*args).compile(), args, flop


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps, batch = 5, 128
    print(f"cpu: {bm.cpu_model()}; {' '.join(bm.vector_extensions())}", flush=True)
    print(f"peak GFLOP/s (4096^2): float32 {bm.matmul_peak():.0f}, "
          f"bfloat16 {bm.matmul_peak(dtype='bfloat16'):.0f}", flush=True)
    for arch, workload, layer in bm.ROWS:
        variants = {d: compiled(workload, arch, layer or 1, d, steps) for d in ops.COMPUTE_DTYPES}
        rates = {d: [] for d in variants}
        for _ in range(rounds):
            for name, (fn, args, _) in variants.items():
                params, opt_state = jax.tree.map(jnp.copy, args[:2])
                jax.block_until_ready(fn(params, opt_state, *args[2:]))
                per_call = []
                for _ in range(3):
                    params, opt_state = jax.tree.map(jnp.copy, args[:2])
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(params, opt_state, *args[2:]))
                    per_call.append(steps * batch / (time.perf_counter() - t0))
                rates[name].append(statistics.median(per_call))
        a, b = rates["float32"], rates["bfloat16"]
        ratios = [y / x for x, y in zip(a, b)]
        flop = variants["float32"][2]
        name = workload if workload == "cnn" else f"cae {layer}"
        print(f"{arch:8s} {name:6s} float32 {statistics.median(a):7.1f} img/s "
              f"({statistics.median(a) * flop / 1e9:5.0f} GFLOP/s)  bfloat16 "
              f"{statistics.median(b):7.1f} img/s ({statistics.median(b) * flop / 1e9:5.0f} GFLOP/s)"
              f"  x{statistics.median(ratios):.2f} (rounds: "
              + " ".join(f"{r:.2f}" for r in ratios) + ")", flush=True)


if __name__ == "__main__":
    main()
