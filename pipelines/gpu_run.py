"""Makes the GPU records in one call of a lent machine: the benchmark, then a comparison
stopped by SIGTERM before --limit seconds, so that the same call again resumes it.

  python -m pipelines.gpu_run --records=$OUT --preset=paper --limit=540

Writes into --records: machine.txt (nvidia-smi, jax and its devices); on the first call (while
the workdir does not exist) benchmark_fp32.jsonl and benchmark_bf16.jsonl (pipelines.benchmark
--all --steps=20 --repeats=3, without and with --dtype=bfloat16) and seeds_cnn.jsonl (the CNN
step of 10 seeds in one program with XLA's convolutions or patch matmuls, the seeds vmapped or
mapped); then compare_log.txt, summary.txt and mnist_PRESET.tgz, the workdir without its
checkpoints: `tar xzf` it and `python -m pipelines.publish --workdir=mnist_PRESET
--out=results/...`. The workdir is --workdir, or runs/mnist_PRESET, kept between calls on a
warm machine. Each step runs in a process of its own, so that this one never holds the GPU.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from pathlib import Path

from absl import flags

from pipelines import common
from scae.errors import InputError

_OUT = flags.DEFINE_string("records", None, "Folder for the records (the files below).")
_PRESET = flags.DEFINE_enum("preset", "paper", ["paper", "quick", "smoke"],
                            "The configs/mnist.py preset that the comparison runs.")
_LIMIT = flags.DEFINE_integer("limit", 540, "Seconds this call may take.")
_BENCHMARK = flags.DEFINE_bool("benchmark", True, "Time the steps on the first call.")

# A comparison started with less time left would only compile before its SIGTERM.
MIN_COMPARE_S = 30


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def benchmark(out: Path) -> None:
    """The benchmark files of the module's docstring."""
    bench = _python("-m", "pipelines.benchmark", "--steps=20", "--repeats=3")
    for name, extra in (("benchmark_fp32.jsonl", ["--all"]),
                        ("benchmark_bf16.jsonl", ["--all", "--dtype=bfloat16"])):
        with open(out / name, "w") as f:
            subprocess.run(bench + extra, stdout=f, stderr=subprocess.DEVNULL, check=False)
    # XLA's convolutions group over the vmapped seeds; patch matmuls batch their GEMMs.
    with open(out / "seeds_cnn.jsonl", "w") as f:
        for impl in ("xla", "matmul"):
            for batching in ("vmap", "map"):
                subprocess.run(bench + ["--workload=cnn", "--seeds=10", f"--conv_impl={impl}",
                                        f"--seed_batching={batching}"],
                               stdout=f, stderr=subprocess.DEVNULL, check=False)


def pack(workdir: Path, tgz: Path) -> None:
    """``workdir`` as ``tgz`` under its own name, without its ``ckpt`` folders."""
    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "ckpt" in Path(member.name).parts else member

    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(workdir, arcname=workdir.name, filter=keep)


def compare(preset: str, workdir: Path, log: Path, seconds: float) -> int:
    """Runs the comparison for at most ``seconds``, then SIGTERM (the compare saves what it
    has and exits 143; a rerun resumes it) and, a minute later, SIGKILL; its exit status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(_python("-m", "pipelines.compare",
                                        f"--config=configs/mnist.py:{preset}",
                                        f"--workdir={workdir}"),
                                stdout=f, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def main(config, workdir: Path | None) -> None:
    """The command, in the envelope of :mod:`pipelines.common` (config is not used)."""
    start = time.monotonic()
    if not _OUT.value:
        raise InputError("--records: required")
    if _LIMIT.value < 1:
        raise InputError(f"--limit: expected whole seconds >= 1, got {_LIMIT.value}")
    out, preset = Path(_OUT.value), _PRESET.value
    workdir = workdir or Path("runs") / f"mnist_{preset}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "machine.txt", "w") as f:
        try:
            subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv"], stdout=f, stderr=subprocess.STDOUT, check=False)
        except OSError:
            f.write("no nvidia-smi\n")
            f.flush()
        subprocess.run(_python("-c", "import jax; print(jax.__version__, jax.devices())"),
                       stdout=f, stderr=subprocess.STDOUT, check=False)
    if _BENCHMARK.value and not workdir.exists():
        benchmark(out)
    left = _LIMIT.value - (time.monotonic() - start)
    if left < MIN_COMPARE_S:
        summary = f"compare not started: {left:.0f} s left of the {_LIMIT.value} s limit; run again"
    else:
        t = time.monotonic()
        status = compare(preset, workdir, out / "compare_log.txt", left)
        summary = (f"compare exit status {status}, {time.monotonic() - t:.0f} s (143: stopped "
                   "at the limit, and the same call again resumes it)")
        pack(workdir, out / f"mnist_{preset}.tgz")
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
