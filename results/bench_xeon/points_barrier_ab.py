"""The training steps with Winograd's column stage materialised (lax.optimization_barrier between
the two stages of the input transform, so that XLA does not recompute it inside each of the 36
points' fusions) against the transform as it is, compiled in one process and timed in
alternation (pipelines.benchmark.alternate, ROUNDS rounds, 5 steps of 128 images per call).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_xeon/points_barrier_ab.py ROUNDS
"""
import statistics, sys
import jax, jax.numpy as jnp
from jax import lax
from pipelines import benchmark as bm
from scae.models import winograd as wg

orig = wg._points
def barrier_points(x, k, th, tw):
    bt, _, _ = wg.matrices(k)
    n = k + 1
    t = [wg._comb(bt[b], wg._strided(x, 2, n, tw)) for b in range(n)]
    t = lax.optimization_barrier(t)
    rows = [wg._strided(t[b], 1, n, th) for b in range(n)]
    return [wg._comb(bt[a], rows[b]).reshape(-1, x.shape[-1]) for a in range(n) for b in range(n)]

rounds = int(sys.argv[1])
for workload, arch, layer in [("cnn", "mnist", 1), ("cae", "mnist", 2), ("cnn", "cifar10", 1), ("cae", "cifar10", 2)]:
    v = {}
    wg._points = orig
    fn, args, _ = bm.compile_step(workload, arch, layer, 128, 5); v["as is"] = (fn, args)
    wg._points = barrier_points
    fn, args, _ = bm.compile_step(workload, arch, layer, 128, 5); v["barrier"] = (fn, args)
    wg._points = orig
    r = bm.alternate(v, 640, rounds)
    ratios = [b / a for a, b in zip(r["as is"], r["barrier"])]
    print(workload, arch, layer, f"as is {statistics.median(r['as is']):.0f} barrier {statistics.median(r['barrier']):.0f} x{statistics.median(ratios):.3f}", " ".join(f"{x:.2f}" for x in ratios), flush=True)
