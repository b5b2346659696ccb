"""The quick job's validation evaluation (the paper CNN, 3 seeds x 1000 MNIST-sized images) as
scae.study.finetune.run_cell builds it, with the seeds vmapped or mapped; one JSON line.

    python results/bench_zen3/seed_batching_eval.py map|vmap
"""
import importlib
import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from scae.train import driver
from scae.study import finetune as finetuning
from scae.models import modules as models

mode = sys.argv[1]
config = importlib.import_module("configs.mnist").get_config("quick")
spec = models.CNNSpec.from_config(config.model, (28, 28, 1))
nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(3)]
graphdef, _ = models.split(nets[0])
params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
x = jax.random.normal(jax.random.PRNGKey(0), (1000, 28, 28, 1))
y = jnp.zeros((1000,), jnp.int32)
errors = jax.jit(driver.over_seeds(finetuning.error_fn(graphdef, driver.seeds_at_once(3, mode)),
                                   (0, None, None), mode))
t = time.perf_counter()
errors(params, x, y).block_until_ready()
first = time.perf_counter() - t
times = []
for _ in range(5):
    t = time.perf_counter()
    errors(params, x, y).block_until_ready()
    times.append(time.perf_counter() - t)
best = sorted(times)[2]
print(json.dumps({"workload": "evaluation", "seeds": 3, "images": 1000, "seed_batching": mode,
                  "first_call_s": round(first, 2), "call_s": round(best, 3),
                  "img_per_s": round(3000 / best, 1)}))
