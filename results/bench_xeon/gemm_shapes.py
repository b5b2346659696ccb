"""Isolated GEMMs of the CAE layer-2 step's shapes (MNIST size, 128 images: 8192 rows, K = 2500
= 5*5*100, 150 maps) and of the 4096^2 peak, fp32 and bf16 operands (fp32 results): GFLOP/s and
ms, best of 5 calls. (8192, 150, 2500) is the tied decoder's and a conv input gradient's product
on the patches path, whose 82 MB fp32 result bounds it by memory.

    PYTHONPATH=. python results/bench_xeon/gemm_shapes.py
"""
import jax, jax.numpy as jnp
from jax import lax
from pipelines.benchmark import best_seconds
def t(m,k,n, dt, tn=False):
    a = jnp.ones((k,m) if tn else (m,k), dt); b = jnp.ones((k,n), dt)
    dims = (((0,),(0,)),((),())) if tn else (((1,),(0,)),((),()))
    f = jax.jit(lambda a,b: lax.dot_general(a,b,dims,preferred_element_type=jnp.float32))
    best = best_seconds(f, a, b)
    return 2*m*k*n/best/1e9, best*1e3
for shape in [(8192,2500,150),(8192,150,2500),(2500,8192,150),(4096,4096,4096),(8192,512,512),(8192,2560,160)]:
    for dt in (jnp.float32, jnp.bfloat16):
        g, ms = t(*shape, dt)
        print(shape, dt.__name__ if hasattr(dt,'__name__') else dt, f"{g:.0f} GFLOP/s {ms:.1f} ms")
g, ms = t(2500,8192,150, jnp.bfloat16, tn=True); print("tn (2500,8192,150) bf16", f"{g:.0f} {ms:.1f}")
