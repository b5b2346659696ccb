"""Where the test suite's Python threads spend their time, from a py-spy profile of the whole
run with every subprocess (the commands the tests start):

    SCAE_HUGE_PAGES=0 py-spy record -r 20 --subprocesses -f raw -o suite.raw -- \\
        python -m pytest -n 2 -q -p no:cacheprovider
    python results/bench_zen3/suite_profile.py suite.raw 20

Each sample (one thread, 1/RATE s) is put in the first class its stack matches: XLA's compiler
or its persistent cache, matplotlib, orbax, an import, JAX's lowering or tracing, or the
interpreter with no Python frame (start-up and shut-down). Threads of XLA's own pools, which
run compiled programs, are not Python threads and are not sampled.
"""
import collections
import re
import sys

CLASSES = (
    ("XLA compile or cache", ("backend_compile", "compile_or_get_cached")),
    ("matplotlib", ("matplotlib",)),
    ("orbax", ("orbax",)),
    ("import", ("_find_and_load",)),
    ("JAX lowering", ("lower_jaxpr_to_module", "_pjit_lower", "lower_sharding_computation")),
    ("JAX tracing", ("trace_to_jaxpr", "_infer_params")),
)


def kind(command: str) -> str:
    if "exec(eval" in command:
        return "pytest worker"
    m = re.search(r"pipelines\.(\w+)", command)
    return f"command {m.group(1)}" if m else "other process"


def main(path: str, rate: float) -> None:
    by_class, by_kind, pids = collections.Counter(), collections.Counter(), {}
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        procs = re.findall(r'process (\d+):"([^"]*)"', stack)
        if not procs:
            continue
        pid, command = procs[-1]
        k = kind(command)
        pids.setdefault(pid, k)
        frames = re.sub(r'process \d+:"[^"]*"', "", stack).strip(";")
        cls = next((c for c, keys in CLASSES if any(key in frames for key in keys)),
                   "no Python frame" if not frames else "other")
        by_class[k == "pytest worker", cls] += int(n)
        by_kind[k] += int(n)
    total = sum(by_kind.values()) / rate
    print(f"{total:.0f} s of sampled Python-thread time")
    processes = collections.Counter(pids.values())
    print("by process (processes seen, s):")
    for k, v in by_kind.most_common():
        print(f"  {v / rate:7.1f} s  {k} ({processes[k]})")
    print("by class, in the commands / in the pytest workers (s):")
    for cls in [c for c, _ in CLASSES] + ["no Python frame", "other"]:
        print(f"  {by_class[False, cls] / rate:7.1f} / {by_class[True, cls] / rate:7.1f}  {cls}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 20.0)
