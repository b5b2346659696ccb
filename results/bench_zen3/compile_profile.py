"""Runs ``pipelines.compare`` with listeners on JAX's monitoring events, and writes each
backend compilation and cache retrieval (seconds since start) and the totals per event.

  JAX_COMPILATION_CACHE_DIR=/tmp/empty_cache python results/bench_zen3/compile_profile.py \
      OUT.txt --config=configs/mnist.py:quick --workdir=/tmp/run
(from the project root, in its environment, with PYTHONPATH=.)
"""
import atexit
import collections
import sys
import time

import jax.monitoring as monitoring

totals, counts = collections.defaultdict(float), collections.Counter()
t0 = time.time()
out = open(sys.argv.pop(1), "w")


def on_duration(event: str, seconds: float, **_) -> None:
    totals[event] += seconds
    counts[event] += 1
    if "backend_compile" in event or "retrieval" in event:
        print(f"{time.time() - t0:7.1f} {event} {seconds:.2f}", file=out, flush=True)


@atexit.register
def report() -> None:
    for event in sorted(totals):
        print(f"TOTAL {event}: {totals[event]:.1f} s over {counts[event]}", file=out, flush=True)


monitoring.register_event_duration_secs_listener(on_duration)
sys.argv[0] = "pipelines.compare"
from pipelines import common, compare  # noqa: E402

common.run(compare.main)
