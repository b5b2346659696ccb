"""Winograd's 36 batched products (CAE layer 2 / conv 2: 2048 or 3200 tiles x 100 maps by 100 x 150,
MNIST and CIFAR-10 sizes) in fp32, with bf16 operands, and as three bf16 products of split
operands (hi*hi + hi*lo + lo*hi, one dot over the operands concatenated along K, the split
and concatenation included): ms per product inside a loop of 10 (each iteration also scales
the input and sums the output, alike for all three), and the rms error relative to fp32.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_xeon/split_bf16_products.py
"""
import jax, jax.numpy as jnp
from jax import lax
from pipelines.benchmark import best_seconds
bf = jnp.bfloat16
def fp32(a, b):
    return lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))))
def bf16(a, b):
    return lax.dot_general(a.astype(bf), b.astype(bf), (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
def split3(a, b):
    ah = a.astype(bf); al = (a - ah.astype(jnp.float32)).astype(bf)
    bh = b.astype(bf); bl = (b - bh.astype(jnp.float32)).astype(bf)
    A = jnp.concatenate([ah, ah, al], axis=2); B = jnp.concatenate([bh, bl, bh], axis=1)
    return lax.dot_general(A, B, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
def loop(f, reps=10):
    return jax.jit(lambda a, b: lax.fori_loop(0, reps, lambda i, c: (c[0], c[1], c[2] + f(c[0] * (1 + c[2] * 0), c[1]).sum()), (a, b, jnp.float32(0)))[2])
for (T, R, X, Y) in [(36, 2048, 100, 150), (36, 3200, 100, 150)]:
    a = jax.random.normal(jax.random.PRNGKey(0), (T, R, X)); b = jax.random.normal(jax.random.PRNGKey(1), (T, X, Y))
    ref = fp32(a, b)
    for name, f in [("fp32", fp32), ("bf16 x1", bf16), ("bf16 x3 split", split3)]:
        best = best_seconds(loop(f), a, b)
        err = float(jnp.sqrt(jnp.mean((f(a, b) - ref) ** 2) / jnp.mean(ref ** 2)))
        print((T, R, X, Y), f"{name:14s} {best * 100:6.2f} ms per product  rel rms err {err:.1e}", flush=True)
