"""Constructing the paper CNN and stack from a cold process without a compilation cache: the
kernels drawn through ``models.init_kernel`` (compiled at -O1 on the CPU) or drawn eagerly
(compiled at XLA's default -O2), seconds.   usage: python results/bench_zen3/init_compile.py
{compiled,eager}   (from the project root, PYTHONPATH=.; one process per measurement)"""
import sys
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from scae import config as cfglib
from scae.models import modules as models
from scae.models import stack  # noqa: E402

if sys.argv[1] == "eager":
    models.init_kernel = lambda key, shape, init: models.INITIALIZERS[init]()(key, shape,
                                                                              jnp.float32)
c = cfglib.base_config("mnist")
t = time.perf_counter()
s = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(0))
jax.block_until_ready(nnx.state(s))
t_stack = time.perf_counter() - t
t = time.perf_counter()
cnn = models.CNN(models.CNNSpec.from_config(c.model, (28, 28, 1)), rngs=nnx.Rngs(1))
jax.block_until_ready(nnx.state(cnn))
print(f"{sys.argv[1]}: stack {t_stack:.2f} s, then the CNN {time.perf_counter() - t:.2f} s")
