"""The pooling pieces of the training steps, alone: XLA's gradient of a max reduction against
the elementwise forms scae.models.ops and scae.models.winograd use (median of 7 calls of 10, two rounds, ms;
shapes of the paper's CNN at batch 128: conv 1's output at MNIST and CIFAR-10 size, and
Winograd's four tile outputs of conv 2 at MNIST size).

    PYTHONPATH=. python results/bench_zen3/pool_grad_pieces.py
"""
import statistics
import time

import jax
import jax.numpy as jnp

from scae.models import ops
from scae.models import winograd


def ms(f, *args) -> float:
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(10):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / 10 * 1000)
    return statistics.median(times)


def reduce_pool(x, p):  # the reduction form max_pool had
    n, h, w, c = x.shape
    return x.reshape(n, h // p, p, w // p, p, c).max(axis=(2, 4))


def reduce_mask(x, p):  # the reduction form pool_mask had
    n, h, w, c = x.shape
    xw = x.reshape(n, h // p, p, w // p, p, c)
    is_max = xw == xw.max(axis=(2, 4), keepdims=True)
    priority = (p * p - jnp.arange(p * p, dtype=jnp.int32)).reshape(1, 1, p, 1, p, 1)
    ranked = jnp.where(is_max, priority, 0)
    return (ranked == ranked.max(axis=(2, 4), keepdims=True)).reshape(x.shape)


def grad(pool):
    return lambda z, g: jax.vjp(pool, z)[1](g)[0]


if __name__ == "__main__":
    key = jax.random.PRNGKey(0)
    for rnd in (1, 2):
        for name, shape in (("MNIST conv 1", (128, 24, 24, 100)), ("CIFAR-10 conv 1", (128, 28, 28, 100))):
            z = jax.random.normal(key, shape)
            g = jax.random.normal(key, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
            zt = jnp.round(z)  # ties: both gradients must agree on them too
            same = bool((jax.jit(grad(lambda v: reduce_pool(v, 2)))(zt, g)
                         == jax.jit(grad(lambda v: ops.max_pool(v, 2)))(zt, g)).all())
            same_mask = bool((jax.jit(lambda v: reduce_mask(v, 2))(zt)
                              == jax.jit(lambda v: ops.pool_mask(v, 2))(zt)).all())
            print(f"round {rnd} {name} {shape}: max-pool gradient, reduction "
                  f"{ms(grad(lambda v: reduce_pool(v, 2)), z, g):.1f} / elementwise "
                  f"{ms(grad(lambda v: ops.max_pool(v, 2)), z, g):.1f} (same values with ties: {same});"
                  f" pooling mask {ms(lambda v: reduce_mask(v, 2), z):.1f} / "
                  f"{ms(lambda v: ops.pool_mask(v, 2), z):.1f} (same: {same_mask})")
        y = jax.random.normal(key, (4, 2048, 150))
        g = jax.random.normal(key, (2048, 150))
        yt = jnp.round(y)
        lead = grad(lambda v: v.max(axis=0))
        mine = grad(lambda v: winograd._max_of([v[i] for i in range(4)]))
        same = bool((jax.jit(lead)(yt, g) == jax.jit(mine)(yt, g)).all())
        print(f"round {rnd} MNIST conv 2 tiles {y.shape}: maximum's gradient, reduction "
              f"{ms(lead, y, g):.1f} / elementwise {ms(mine, y, g):.1f} (same with ties: {same})")
