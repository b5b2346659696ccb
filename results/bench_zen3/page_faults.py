"""Time and minor page faults per call of conv 2 with its pooling (MNIST size, 128 images),
forward and training, by patches x kernel (ops, conv_impl=matmul) and by scae.models.winograd.
Run it as is and with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 to see what huge pages change.

    python results/bench_zen3/page_faults.py
"""
import resource, time, functools, numpy as np, jax, jax.numpy as jnp
from scae.models import winograd as wg
from scae.models import ops
N=128; x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (N, 12, 12, 100)))
w = jax.random.normal(jax.random.PRNGKey(1), (5,5,100,150))/50
r = jax.random.normal(jax.random.PRNGKey(2), (N, 4, 4, 150))
for name, f in [("wino pool2", jax.jit(wg.conv_pool2)), ("mm conv_pool", jax.jit(lambda x,w: ops.conv_pool(x,w,2,"matmul"))),
                ("train mm", jax.jit(jax.grad(lambda x,w: jnp.sum(ops.conv_pool(x,w,2,"matmul")*r),(0,1)))),
                ("train wino", jax.jit(jax.grad(lambda x,w: jnp.sum(wg.conv_pool2(x,w)*r),(0,1))))]:
    jax.block_until_ready(f(x,w)); jax.block_until_ready(f(x,w))
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t=time.perf_counter()
    for _ in range(10): jax.block_until_ready(f(x,w))
    dt=(time.perf_counter()-t)/10
    print(name, f"{1000*dt:.1f} ms", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt-f0)/10, "minor faults per call")
