"""Lowering and compile time of the CAE layer-3 and layer-1 steps at the quick job's shapes (batch 32, 39 steps per call),
without the persistent cache:  JAX_ENABLE_COMPILATION_CACHE=false PYTHONPATH=. python results/bench_zen3/cae_compile_time.py"""
import time, jax, jax.numpy as jnp
from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.train import optim
for layer in (3, 1):
    loss_fn, params, data, _ = bm._workload("cae", "mnist", layer, 32, "auto")
    tx = optim.make(cfglib.base_config("mnist").pretrain, 1000)
    run = driver.make_steps(loss_fn, tx, 32, 39)
    args = (params, tx.init(params), data, jnp.arange(39 * 32) % 128, 0, 0, jax.random.PRNGKey(1))
    t = time.perf_counter(); low = run.lower(*args); t1 = time.perf_counter(); low.compile(); t2 = time.perf_counter()
    print(f"layer {layer}: lower {t1 - t:.2f} s, compile {t2 - t1:.2f} s")
