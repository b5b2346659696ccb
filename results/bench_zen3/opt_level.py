"""Compile time and speed of a training step (MNIST size, 20 steps per call) under the XLA_FLAGS
of the environment, without a compilation cache.
  usage: XLA_FLAGS=... python results/bench_zen3/opt_level.py {cnn,cae} LAYER BATCH SEEDS
(from the project root, PYTHONPATH=.); opt_level.txt: cnn 0 64 3 and cae 1 32 1 under each of
no flags, --xla_backend_optimization_level=1 and 0, --xla_llvm_disable_expensive_passes=true, two
rounds."""
import sys, time, json
import jax
jax.config.update("jax_enable_compilation_cache", False)
from pipelines import benchmark as B
from scae import config as cfglib
from scae.train import driver
from scae.train import optim
import jax.numpy as jnp
workload, layer, batch, seeds, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 20
loss_fn, params, data, fpi = B._workload(workload, "mnist", layer, batch, "auto", "float32")
tx = optim.make(cfglib.base_config("mnist").pretrain, 1000)
order = jnp.arange(steps * batch) % (4 * batch); key = jax.random.PRNGKey(1)
if seeds > 1:
    params = jax.tree.map(lambda x: jnp.stack([x] * seeds), params)
    opt_state = jax.vmap(tx.init)(params); order, key = jnp.stack([order] * seeds), jax.random.split(key, seeds)
else:
    opt_state = tx.init(params)
run = driver.make_steps(loss_fn, tx, batch, steps, seeds=seeds > 1)
t = time.perf_counter(); compiled = run.lower(params, opt_state, data, order, 0, 0, key).compile(); ct = time.perf_counter() - t
times = []
for _ in range(4):
    t = time.perf_counter(); params, opt_state, l = compiled(params, opt_state, data, order, 0, 0, key); l.block_until_ready(); times.append(time.perf_counter() - t)
dt = sorted(times[1:])[1]
print(json.dumps({"w": f"{workload}{layer}", "compile_s": round(ct, 2), "img_s": round(batch * steps * seeds / dt, 1)}))
