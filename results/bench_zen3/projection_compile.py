"""The three filter projections of the paper's MNIST stack from a cold process without a
compilation cache: op by op (as Stack.project_filters was) or as one jitted program (as it is).
  usage: python results/bench_zen3/projection_compile.py {eager,jitted}   (PYTHONPATH=.)"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scae import config as cfglib
from scae.models import ops
from scae.models import stack

jax.config.update("jax_enable_compilation_cache", False)
c = cfglib.base_config("mnist")
s = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(0))


def eager(k: int) -> np.ndarray:
    f = jnp.moveaxis(s.layers[k - 1].w[...], 3, 0)
    for j in reversed(range(k - 1)):
        p = s.pools[j]
        f = ops.upsample_nearest(f, p, (f.shape[1] * p, f.shape[2] * p))
        f = ops.conv_full_tied(f, s.layers[j].w[...])
    return np.asarray(f)


project = eager if sys.argv[1] == "eager" else s.project_filters
times = []
for k in (1, 2, 3):
    t = time.perf_counter()
    project(k)
    times.append(time.perf_counter() - t)
print(f"{sys.argv[1]}: layers 1, 2, 3: " + ", ".join(f"{t:.2f}" for t in times)
      + f" s; total {sum(times):.2f} s")
