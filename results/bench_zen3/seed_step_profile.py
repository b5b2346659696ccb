"""Where a training step of several seeds spends its time (jax.profiler, the XLA ops' thread
time in ms per step, 2 calls of 5 steps): the step of pipelines.benchmark with --seeds.

    python results/bench_zen3/seed_step_profile.py cnn 64 3 vmap   # WORKLOAD BATCH SEEDS MODE
(from the project root, PYTHONPATH=.); prints the 12 costliest ops with their HLO shapes.
"""
import collections
import glob
import gzip
import json
import re
import shutil
import sys

import jax
import jax.numpy as jnp

from pipelines import benchmark as bm
from scae import config as cfglib
from scae.train import driver
from scae.train import optim

workload, batch, seeds, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
loss_fn, params, data, _ = bm._workload(workload, "mnist", 2, batch, "auto")
tx = optim.make(cfglib.base_config("mnist").pretrain, 1000)
steps = 5
order = jnp.stack([jnp.arange(steps * batch) % (4 * batch)] * seeds)
key = jax.random.split(jax.random.PRNGKey(1), seeds)
params = jax.tree.map(lambda x: jnp.stack([x] * seeds), params)
opt_state = jax.vmap(tx.init)(params)
run = driver.make_steps(loss_fn, tx, batch, steps, seeds=True, seed_batching=mode)
compiled = run.lower(params, opt_state, data, order, 0, 0, key).compile()
params, opt_state, _ = compiled(params, opt_state, data, order, 0, 0, key)
shutil.rmtree("/tmp/scae_trace", ignore_errors=True)
with jax.profiler.trace("/tmp/scae_trace"):
    for _ in range(2):
        params, opt_state, losses = compiled(params, opt_state, data, order, 0, 0, key)
        losses.block_until_ready()
trace = glob.glob("/tmp/scae_trace/**/*.trace.json.gz", recursive=True)[0]
ms = collections.defaultdict(float)
for e in json.load(gzip.open(trace))["traceEvents"]:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith("$") and not re.search(
            r"Thunk|Pjit|Execut|Await", name):
        ms[name] += e["dur"] / 1000 / (2 * steps)
hlo = compiled.as_text()
print(f"# {workload}, {seeds} seeds x {batch} images, {mode}: sum of ops {sum(ms.values()):.1f}"
      " ms of thread time per step")
for name, t in sorted(ms.items(), key=lambda kv: -kv[1])[:12]:
    m = re.search(rf"%{re.escape(name)} = (\S+)", hlo)
    print(f"{t:8.2f} ms  {name:28s} {m.group(1) if m else ''}")
