"""The quick job's test errors per arm from runs' records, one column per run: the seeds' errors
in percent and their mean +- standard deviation (ddof 1), as a markdown table, then each run's
summary line (wall time, peak memory) where its quick_job.sh folder has one.

    python results/bench_xeon/quick_job_errors.py NAME=DIR [NAME=DIR ...]

DIR is a quick_job.sh output folder (DIR/run/compare/runs.jsonl) or a folder with runs.jsonl.
"""
import json
import os
import statistics
import sys


def runs_file(folder: str) -> str:
    for path in (os.path.join(folder, "run", "compare", "runs.jsonl"),
                 os.path.join(folder, "runs.jsonl")):
        if os.path.exists(path):
            return path
    raise SystemExit(f"no runs.jsonl under {folder}")


def errors(folder: str) -> dict[str, list[tuple[int, float]]]:
    arms: dict[str, list[tuple[int, float]]] = {}
    with open(runs_file(folder)) as f:
        for line in f:
            r = json.loads(line)
            arms.setdefault(r["arm"], []).append((r["seed"], r["test_error"]))
    return {arm: sorted(v) for arm, v in arms.items()}


def cell(values: list[tuple[int, float]]) -> str:
    e = [v for _, v in values]
    return (", ".join(f"{v:.2f}" for v in e)
            + f": {statistics.mean(e):.2f} ± {statistics.stdev(e):.2f}")


runs = [a.split("=", 1) for a in sys.argv[1:]]
table = {name: errors(folder) for name, folder in runs}
print("| arm | " + " | ".join(name for name, _ in runs) + " |")
print("| --- |" + " --- |" * len(runs))
for arm in table[runs[0][0]]:
    print(f"| {arm} | " + " | ".join(cell(table[name][arm]) for name, _ in runs) + " |")
for name, folder in runs:
    summary = os.path.join(folder, "summary.txt")
    if os.path.exists(summary):
        print(f"{name}: {open(summary).read().strip()}")
