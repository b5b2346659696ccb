"""Where Winograd's stacked input transform spends its time (jax.profiler, ms per call summed
over the XLA thunks, 5 calls): the transform alone, the 36 batched matmuls alone, a plain copy
of the same 29 MB, and transform + matmuls in one program (conv 2, MNIST size, 128 images).

    python results/bench_zen3/winograd_profile.py
"""
import collections, glob, gzip, json, shutil
import jax, jax.numpy as jnp
from scae.models import winograd as wg


def prof(f, *a, label=""):
    jax.block_until_ready(f(*a))
    shutil.rmtree("/tmp/scae_trace", ignore_errors=True)
    with jax.profiler.trace("/tmp/scae_trace"):
        for _ in range(5):
            jax.block_until_ready(f(*a))
    ev = json.load(gzip.open(glob.glob("/tmp/scae_trace/**/*.trace.json.gz", recursive=True)[0]))
    d, c = collections.defaultdict(float), collections.Counter()
    for e in ev["traceEvents"]:
        if e.get("ph") == "X" and not e["name"].startswith("$") and "Thunk" not in e["name"]:
            d[e["name"]] += e["dur"] / 5000
            c[e["name"]] += 1
    print(f"== {label}: sum of ops {sum(d.values()):.1f} ms")
    for k, v in sorted(d.items(), key=lambda t: -t[1])[:4]:
        print(f"   {v:8.2f} ms  {c[k] // 5:4d}x  {k[:80]}")


x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(0), (128, 12, 12, 100)))
w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 100, 150)) / 50
u, v = wg._kernel_transform(w), wg._input_transform(x, 5, 4, 4)
prof(jax.jit(lambda x: wg._input_transform(x, 5, 4, 4)), x, label="input transform (stacked)")
prof(jax.jit(lambda v, u: wg._batched(v, u, 1)), v, u, label="36 batched matmuls")
prof(jax.jit(lambda v: v + 1), v, label="a 29 MB elementwise copy")
prof(jax.jit(lambda x, u: wg._batched(wg._input_transform(x, 5, 4, 4), u, 1)), x, u,
     label="input transform + matmuls")
