"""Every program JAX lowers in one smoke compare (the command most of the test suite runs),
with the time spent lowering it, by the scae call site that asked for it.

  python results/bench_zen3/smoke_programs.py WORKDIR   (WORKDIR is removed first)

It wraps JAX's internal ``pjit._resolve_and_lower`` (tracing is done by then; lowering to
MLIR and the compilation or persistent-cache load follow), so it is a probe for this jax
version (0.10.2), not part of the project.
"""

import atexit
import collections
import runpy
import shutil
import sys
import time
import traceback

import jax
from jax._src import pjit

count, seconds = collections.Counter(), collections.Counter()
events = collections.Counter()  # JAX's own compile-time events, in seconds
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **_: events.__setitem__(event, events[event] + secs))
lower = pjit._resolve_and_lower


def probe(*args, **kwargs):
    name = kwargs.get("name", args[8] if len(args) > 8 else "?")
    ours = [f for f in traceback.extract_stack()[:-1]
            if "/scae/" in f.filename or "/pipelines/" in f.filename]
    site = (f"{ours[-1].filename.rsplit('/', 2)[-2]}/{ours[-1].filename.rsplit('/', 1)[-1]}"
            f":{ours[-1].lineno} ({ours[-1].name})" if ours else "?")
    t0 = time.perf_counter()
    try:
        return lower(*args, **kwargs)
    finally:
        count[name, site] += 1
        seconds[name, site] += time.perf_counter() - t0


def report() -> None:
    out = sys.__stderr__
    print(f"{sum(count.values())} programs lowered in {sum(seconds.values()):.2f} s "
          f"(from the traced program to the executable); JAX's events:", file=out)
    for event, secs in sorted(events.items()):
        if event.startswith("/jax/core/compile/") or "cache" in event:
            print(f"  {secs:6.2f} s  {event}", file=out)
    print("by name (count, s):", file=out)
    names, name_s = collections.Counter(), collections.Counter()
    for (name, _), n in count.items():
        names[name] += n
    for (name, _), s in seconds.items():
        name_s[name] += s
    for name, n in names.most_common(12):
        print(f"  {n:4d} {name_s[name]:6.2f} s  {name}", file=out)
    print("by call site, the 15 costliest (s, count):", file=out)
    for key, s in seconds.most_common(15):
        print(f"  {s:6.2f} s {count[key]:4d}  {key[0]:16s} {key[1]}", file=out)


pjit._resolve_and_lower = probe
atexit.register(report)
shutil.rmtree(sys.argv[1], ignore_errors=True)
sys.argv = ["pipelines.compare", "--config=configs/mnist.py:smoke", f"--workdir={sys.argv[1]}"]
runpy.run_module("pipelines.compare", run_name="__main__", alter_sys=True)
