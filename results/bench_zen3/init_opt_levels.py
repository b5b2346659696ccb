"""Whether every initialiser's draws compiled at LLVM -O0 and -O1 (``compiler_options`` of
``jax.jit``) are bit-identical to the eager draws (XLA's default -O2), for the paper's kernel
shapes.   usage: python results/bench_zen3/init_opt_levels.py   (project root, PYTHONPATH=.)"""
import jax
import jax.numpy as jnp
import numpy as np

from scae.models.modules import INITIALIZERS

jax.config.update("jax_enable_compilation_cache", False)
SHAPES = [(5, 5, 1, 100), (5, 5, 100, 150), (3, 3, 150, 200), (800, 300), (300, 10), (5, 5, 3, 100)]
for level in (0, 1):
    draw = jax.jit(lambda k, s, i: INITIALIZERS[i]()(k, s, jnp.float32), static_argnums=(1, 2),
                   compiler_options={"xla_backend_optimization_level": level})
    same = all(np.array_equal(draw(jax.random.fold_in(jax.random.PRNGKey(3), j), s, name),
                              INITIALIZERS[name]()(jax.random.fold_in(jax.random.PRNGKey(3), j),
                                                   s, jnp.float32))
               for name in INITIALIZERS for j, s in enumerate(SHAPES))
    print(f"-O{level}: bit-identical to the eager draws for every initialiser and shape: {same}")
