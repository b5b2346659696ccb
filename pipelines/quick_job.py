r"""Times the README's quick job from an empty compilation cache: wall time, peak resident
memory and a timestamped log.

  python -m pipelines.quick_job --job_dir=runs/quick_fp32
  python -m pipelines.quick_job --job_dir=runs/quick_bf16 --config=configs/mnist.py:quick \
      --config.model.compute_dtype=bfloat16
  python -m pipelines.quick_job --job_dir=runs/quick_before --code=../scae_f560c58
  python -m pipelines.quick_job --table=before=runs/quick_before --table=fp32=runs/quick_fp32

Runs ``python -m pipelines.compare --config=configs/mnist.py:quick --workdir=JOB_DIR/run`` (or
with the --config and --config.KEY=VALUE given here) in a process of its own, with
JAX_COMPILATION_CACHE_DIR=JOB_DIR/cache, from the checkout --code (this one by default), and
writes into --job_dir (absent or empty): log.txt (the compare's lines, each after the seconds
since the start; progress bars only at 100%), rss.txt (the compare's resident memory every
0.5 s: epoch seconds, kB), summary.txt (printed too: wall seconds and peak resident MB) and
the workdir run/.

--table prints instead the test errors per arm of finished runs, one column per NAME=DIR
(DIR: a --job_dir folder, or a folder with runs.jsonl): each seed's error in percent and their
mean ± standard deviation (ddof 1) as a Markdown table, then each run's summary line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import flags

from pipelines import common
from scae.errors import InputError

_OUT = flags.DEFINE_string("job_dir", None, "Folder for the run, absent or empty.")
_CODE = flags.DEFINE_string("code", ".", "The checkout whose pipelines.compare runs.")
_TABLE = flags.DEFINE_multi_string("table", [], "NAME=DIR of a finished run: print the test "
                                   "error table of these runs instead of running.")

QUICK = "configs/mnist.py:quick"


def compare_args(argv: list[str]) -> list[str]:
    """The ``--config`` and ``--config.KEY=VALUE`` arguments of ``argv`` as given (the quick
    preset without them), for the compare: an older checkout loads them its own way."""
    out, args = [], iter(argv)
    for a in args:
        if a.startswith("--config"):
            out += [a] if "=" in a else [a, next(args, "")]
    return out if any(a.split("=")[0] == "--config" for a in out) else [f"--config={QUICK}", *out]


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def timed_run(cmd: list[str], out: Path, cwd: str, env: dict[str, str]) -> tuple[float, int, int]:
    """Runs ``cmd`` and writes out/log.txt and out/rss.txt as the module says; returns (wall
    seconds, peak resident MB, exit status)."""
    peak, done = [0], threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")

    def sample() -> None:
        with open(out / "rss.txt", "w") as f:
            while True:
                kb = _rss_kb(proc.pid)
                if kb:
                    f.write(f"{int(time.time())} {kb}\n")
                    peak[0] = max(peak[0], kb)
                if done.wait(0.5):
                    return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(out / "log.txt", "w") as log:
        for line in proc.stdout:  # text mode: tqdm's \r updates arrive as lines of their own
            line = line.rstrip("\n")
            progress = "step/s" in line or "s/step" in line
            if line.strip() and (not progress or "100%" in line):
                log.write(f"{time.monotonic() - t0:7.1f} {line}\n")
                log.flush()
    status = proc.wait()
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    return wall, peak[0] // 1024, status


def _runs_file(folder: str) -> Path:
    for path in (Path(folder) / "run" / "compare" / "runs.jsonl", Path(folder) / "runs.jsonl"):
        if path.exists():
            return path
    raise InputError(f"--table: no runs.jsonl under {folder}")


def error_table(runs: list[tuple[str, str]]) -> list[str]:
    """The lines --table prints for ``runs`` [(NAME, DIR)]."""
    table = {}
    for name, folder in runs:
        arms: dict[str, list[tuple[int, float]]] = {}
        for line in _runs_file(folder).read_text().splitlines():
            r = json.loads(line)
            arms.setdefault(r["arm"], []).append((r["seed"], r["test_error"]))
        table[name] = {arm: [e for _, e in sorted(v)] for arm, v in arms.items()}

    def cell(e: list[float]) -> str:
        spread = statistics.stdev(e) if len(e) > 1 else float("nan")
        return ", ".join(f"{v:.2f}" for v in e) + f": {statistics.mean(e):.2f} ± {spread:.2f}"

    names = [name for name, _ in runs]
    lines = ["| arm | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for arm in table[names[0]]:
        lines.append(f"| {arm} | " + " | ".join(cell(table[n].get(arm, [float("nan")]))
                                                 for n in names) + " |")
    for name, folder in runs:
        summary = Path(folder) / "summary.txt"
        if summary.exists():
            lines.append(f"{name}: {summary.read_text().strip()}")
    return lines


def main(config, workdir) -> None:
    """The command, in the envelope of :mod:`pipelines.common` (the config is passed on)."""
    if _TABLE.value:
        runs = [tuple(t.split("=", 1)) for t in _TABLE.value]
        if any(len(r) != 2 for r in runs):
            raise InputError("--table: expected NAME=DIR")
        print("\n".join(error_table(runs)))
        return
    if not _OUT.value:
        raise InputError("--job_dir: required (or --table)")
    out = Path(_OUT.value).resolve()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--job_dir: {out} is not empty")
    code = Path(_CODE.value).resolve()
    if not (code / "pipelines" / "compare.py").is_file():
        raise InputError(f"--code: {code} has no pipelines/compare.py")
    out.mkdir(parents=True, exist_ok=True)
    # Without this process's hugetlb tunable: an older checkout runs as it ran on its own,
    # and the current one sets the tunable itself.
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(out / "cache"), PYTHONPATH=str(code),
               GLIBC_TUNABLES=":".join(t for t in tunables if t != common.HUGE_PAGES_TUNABLE))
    cmd = [sys.executable, "-u", "-m", "pipelines.compare", *compare_args(sys.argv[1:]),
           f"--workdir={out / 'run'}"]
    wall, peak_mb, status = timed_run(cmd, out, str(code), env)
    summary = f"wall {wall:.3f} s, peak rss {peak_mb} MB"
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)
    if status:
        common.fail(f"the compare ended with exit status {status}: see {out / 'log.txt'}",
                    status=status if status > 0 else 1)


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
