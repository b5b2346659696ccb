"""Where a training step spends its time, per XLA op (jax.profiler: ms per step summed over the
thunks of 3 calls of 5 steps, batch 128), for fp32 and bf16 matmul operands.

    PYTHONPATH=. python results/bench_xeon/step_profile.py WORKLOAD ARCH LAYER [TOP]
"""
import collections
import glob
import gzip
import json
import shutil
import sys

import jax
import jax.numpy as jnp

from pipelines import benchmark as bm
from scae.models import ops

workload, arch, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 14
steps, calls = 5, 3
for dtype in ops.COMPUTE_DTYPES:
    fn, args, _ = bm.compile_step(workload, arch, layer, 128, steps, dtype=dtype)
    jax.block_until_ready(fn(*jax.tree.map(jnp.copy, args[:2]), *args[2:]))
    shutil.rmtree("/tmp/scae_trace", ignore_errors=True)
    with jax.profiler.trace("/tmp/scae_trace"):
        for _ in range(calls):
            jax.block_until_ready(fn(*jax.tree.map(jnp.copy, args[:2]), *args[2:]))
    path = glob.glob("/tmp/scae_trace/**/*.trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(path))["traceEvents"]
    ms, count = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$") and "Thunk" not in e["name"]:
            ms[e["name"]] += e["dur"] / 1e3 / (calls * steps)
            count[e["name"]] += 1
    total = sum(ms.values())
    print(f"== {workload} {layer} {arch} {dtype}: ops sum {total:.1f} ms per step", flush=True)
    for name, v in sorted(ms.items(), key=lambda t: -t[1])[:top]:
        print(f"  {v:7.2f} ms {100 * v / total:5.1f}%  {count[name] // (calls * steps):3d}x"
              f"  {name[:90]}", flush=True)
