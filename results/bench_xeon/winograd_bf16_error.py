"""The error of a valid 5x5 convolution (batch 32; rms and max against an fp32 HIGHEST-precision
XLA convolution, relative to the reference's rms and max) by float32 Winograd, by the bf16
patches path, and by Winograd with bf16 operands in its batched matmuls (float32 transforms
and accumulation), at the CAE layer-2 shapes of MNIST and CIFAR-10 and at conv 1 of CIFAR-10.

    PYTHONPATH=. python results/bench_xeon/winograd_bf16_error.py
"""
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from scae.models import winograd as wg
from scae.models import ops
def batched_bf16(a, b, contract):
    return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (((2,), (contract,)), ((0,), (0,))), preferred_element_type=jnp.float32)
for (h, c, o, scale) in [(12, 100, 150, 1/50), (32, 3, 100, 1/10), (14, 100, 150, 1/50)]:
    x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (32, h, h, c)))
    w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, c, o)) * scale
    ref = lax.conv_general_dilated(x, w, (1,1), "VALID", dimension_numbers=("NHWC","HWIO","NHWC"), precision=lax.Precision.HIGHEST)
    ref = np.asarray(ref, np.float64)
    m = np.abs(ref).max(); rms = np.sqrt((ref**2).mean())
    def err(y): 
        d = np.asarray(y, np.float64) - ref
        return f"max {np.abs(d).max()/m:.2e} of max, rms {np.sqrt((d**2).mean())/rms:.2e} of rms"
    print(h, c, o)
    print("  winograd fp32 ", err(wg.conv_valid(x, w)))
    print("  direct bf16   ", err(ops.conv_valid(x, w, "matmul", "bfloat16")))
    orig = wg._batched; wg._batched = batched_bf16
    print("  winograd bf16 ", err(wg.conv_valid(x, w)))
    wg._batched = orig
