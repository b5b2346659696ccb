"""Makes the GPU records in one call of a lent machine: the benchmark, then the studies in
priority order, the one under way stopped by SIGTERM early enough that it saves, is packed
and the call ends within --limit seconds; the same call again resumes it.

  python -m pipelines.gpu_run --records=$OUT --preset=paper --limit=540
  python -m pipelines.gpu_run --records=$OUT --limit=570 \
      --studies=sweep:configs/cifar10_sweep.py,compare:configs/cifar10.py:paper

--studies lists COMMAND:CONFIG items (compare or sweep), run one after another in the time
left; a study whose largest phase (by the cost model, scae.study.cost, at the step rates of
this call's benchmark record when there is one) cannot finish in the time left is not
started, and the next one is tried. Each study's workdir is runs/<config>_<preset> (or
--workdir for a single study), packed into <the same name>.tgz without its checkpoints.
--set=KEY=VALUE reaches every study as --config.KEY=VALUE (e.g. where the data are: the
machine has no internet), checked against each study's config before anything runs.
--resume_from=DIR, the records of an earlier call brought along, unpacks each study's
<name>.tgz there as its workdir when that is missing (a fresh machine), so that the call
resumes where the earlier one stopped.

Writes into --records: machine.txt (nvidia-smi, jax and its devices); on the first call
(while no study's workdir exists, and within 30% of --limit) benchmark_fp32.jsonl
(pipelines.benchmark --all --steps=20 --repeats=3) and the seed paths (pipelines.benchmark
--ab=seeds: the CNN step of 1, 2, 5 and 10 seeds in one program, XLA's convolutions or patch
matmuls, vmapped or mapped) under XLA's default command buffers (seeds_default.jsonl) and
with the scan's loop captured too (seeds_cmdbuf_while.jsonl: CUDA graphs around the whole
chunk of steps); then per study its log (compare_log.txt for one study, else
<name>_log.txt), summary.txt and <name>.tgz (mnist_PRESET.tgz by default), the workdir
without its checkpoints: `tar xzf` it and `python -m pipelines.publish
--workdir=mnist_PRESET --out=results/...`. The workdirs stay between calls on a warm
machine; on a fresh one, --resume_from brings them back. Each step runs in a process of its
own, so that this one never holds the GPU.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from pipelines import common, usage
from scae import atomic
from scae.errors import InputError
from scae.study import cost

_OUT = flags.DEFINE_string("records", None, "Folder for the records (the files below).")
_PRESET = flags.DEFINE_enum("preset", "paper", ["paper", "quick", "smoke"],
                            "The configs/mnist.py preset that the comparison runs.")
_LIMIT = flags.DEFINE_integer("limit", 540, "Seconds this call may take.")
_BENCHMARK = flags.DEFINE_bool("benchmark", True, "Time the steps on the first call.")
_STUDIES = flags.DEFINE_list("studies", None, "COMMAND:CONFIG items in priority order, e.g. "
                             "compare:configs/cifar10.py:paper (default: the compare of "
                             "configs/mnist.py:--preset).")
_RESUME = flags.DEFINE_string("resume_from", None, "The --records folder of an earlier call: "
                              "each study's <name>.tgz there is unpacked as its workdir when "
                              "that does not exist, and its benchmark record is used.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE, given to every study as "
                                 "--config.KEY=VALUE (repeat the flag for several), e.g. "
                                 "data.source=folder:data_cache/cifar10-jpeg.tar.gz.")
COMMANDS = ("compare", "sweep")

# The seed-path records and the XLA flags each is measured under (pipelines.benchmark
# --ab=seeds); XLA's default command buffers leave loops out.
SEED_FLAGS = {
    "seeds_default.jsonl": "",
    "seeds_cmdbuf_while.jsonl": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                                "CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE "
                                "--xla_gpu_graph_min_graph_size=1",
}
# A comparison started with less time left would only compile before its SIGTERM.
MIN_COMPARE_S = 30
# What the end of a study takes after its SIGTERM, at most (its checkpoint saved, then
# SIGKILL), and its packing: held back from --limit, so that the call itself ends by then.
STOP_GRACE_S = 45
PACK_S = 15
# The most of --limit the first call's benchmark may take: the studies get the rest.
BENCHMARK_SHARE = 0.3


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def benchmark(out: Path, seconds: float = math.inf) -> list[str]:
    """The benchmark files of the module's docstring, within ``seconds`` in all: a process
    still timing then is stopped (its record keeps the lines written so far) and the ones
    after it do not start. What was cut, one line each."""
    end = time.monotonic() + seconds
    bench = _python("-m", "pipelines.benchmark", "--steps=20", "--repeats=3")
    # bf16 is left out: it gave nothing on the H100 (results/bench_h100), and a lease's
    # minutes go to the seed paths instead.
    runs = [("benchmark_fp32.jsonl", ["--all"], None)]
    # XLA's convolutions group over the vmapped seeds; patch matmuls batch their GEMMs. A
    # step at batch 128 is launch-bound on a GPU: command buffers replay its kernels as one
    # graph, and with WHILE the scan over the steps as well.
    for name, xla_flags in SEED_FLAGS.items():
        runs.append((name, ["--ab=seeds", "--rounds=3"], dict(os.environ, XLA_FLAGS=" ".join(
            f for f in (os.environ.get("XLA_FLAGS", ""), xla_flags) if f))))
    cut = []
    for name, args, env in runs:
        left = end - time.monotonic()
        if left <= 0:
            cut.append(f"benchmark {name} not started: its share of the limit was spent")
            continue
        with open(out / name, "w") as f:
            try:
                subprocess.run(bench + args, stdout=f, stderr=subprocess.DEVNULL, check=False,
                               env=env, timeout=None if math.isinf(left) else left)
            except subprocess.TimeoutExpired:  # run() has killed it
                cut.append(f"benchmark {name} stopped at its share of the limit: partial")
    return cut


def pack(workdir: Path, tgz: Path) -> None:
    """``workdir`` as ``tgz`` under its own name, without its ``ckpt`` folders."""
    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "ckpt" in Path(member.name).parts else member

    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(workdir, arcname=workdir.name, filter=keep)


def compare(preset: str, workdir: Path, log: Path, seconds: float) -> int:
    """The comparison of ``configs/mnist.py:preset`` for at most ``seconds``
    (:func:`study`)."""
    return study("compare", f"configs/mnist.py:{preset}", workdir, log, seconds)


def study(command: str, config: str, workdir: Path, log: Path, seconds: float,
          overrides: Sequence[str] = ()) -> int:
    """Runs ``python -m pipelines.<command>`` (with ``--config.KEY=VALUE`` for each
    ``KEY=VALUE`` of ``overrides``) for at most ``seconds``, then SIGTERM (it saves what it
    has and exits 143; a rerun resumes it) and, ``STOP_GRACE_S`` later, SIGKILL; its exit
    status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(_python("-m", f"pipelines.{command}", f"--config={config}",
                                        *(f"--config.{o}" for o in overrides),
                                        f"--workdir={workdir}"),
                                stdout=f, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def parse_studies(items: list[str], overrides: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(command, config spec, name) of each COMMAND:CONFIG item; bad ones, and ``overrides``
    (``KEY=VALUE``) that do not apply to an item's config, are InputErrors."""
    out = []
    for item in items:
        command, _, spec = item.partition(":")
        if command not in COMMANDS or not spec:
            raise InputError(f"--studies: {item!r} is not COMMAND:CONFIG with COMMAND one of "
                             f"{', '.join(COMMANDS)}")
        path, _, preset = spec.partition(":")
        if not Path(path).is_file():
            raise InputError(f"--studies: {path}: no such config file")
        try:  # every study's config loads, with the overrides, before anything runs
            usage.config_with(spec, overrides)
        except InputError as e:
            try:
                usage.config_with(spec, ())
            except InputError as alone:
                raise InputError(f"--studies: {alone}") from None
            raise InputError(f"--set: {e}") from None
        out.append((command, spec, Path(path).stem + (f"_{preset}" if preset else "")))
    return out


def largest_phase_s(spec: str, records: Path, overrides: Sequence[str] = ()) -> float:
    """The cost model's time of the largest phase of the study ``spec`` (a comparison or a
    sweep) at the step rates of ``records``' benchmark record; 0 where either is unknown."""
    bench = records / "benchmark_fp32.jsonl"
    if not bench.is_file():
        return 0.0
    try:
        config = usage.config_with(spec, overrides)
        phases = cost.study(config)
        measured = cost.rates(atomic.read_jsonl(bench), config.dataset)
        return max(cost.seconds([ph], measured) for ph in phases)
    except (KeyError, AttributeError, InputError):  # not a study config, or a step not timed
        return 0.0


def unpack(tgz: Path, where: Path) -> None:
    """``tgz`` (made by :func:`pack`) as the folder ``where``; a member that would land
    outside it, or is not a plain file or folder, is an InputError, and nothing is left."""
    tmp, root = where.with_name(where.name + ".unpacking"), tgz.name.removesuffix(".tgz")
    atomic.remove_tree(tmp)
    # Python's own check where it has one (3.11.4 on); the members are checked here anyway.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(tgz) as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if (not parts or parts[0] != root or ".." in parts
                        or Path(m.name).is_absolute() or not (m.isfile() or m.isdir())):
                    raise InputError(f"{tgz}: {m.name!r} is not part of a packed workdir")
            tar.extractall(tmp, members=members, **safe)
        (tmp / root).rename(where)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{tgz}: not a readable packed workdir ({e})") from None
    finally:
        atomic.remove_tree(tmp)


def _where(name: str, workdir: Path | None, count: int) -> Path:
    """A study's workdir: ``workdir`` (--workdir) for a single study, else runs/<name>."""
    return workdir if workdir and count == 1 else Path("runs") / name


def main(config, workdir: Path | None) -> None:
    """The command, in the envelope of :mod:`pipelines.common` (config is not used)."""
    start = time.monotonic()
    if not _OUT.value:
        raise InputError("--records: required")
    if _LIMIT.value < 1:
        raise InputError(f"--limit: expected whole seconds >= 1, got {_LIMIT.value}")
    out, preset = Path(_OUT.value), _PRESET.value
    studies = parse_studies(_STUDIES.value or [f"compare:configs/mnist.py:{preset}"], _SET.value)
    places = [_where(name, workdir, len(studies)) for _, _, name in studies]
    earlier = Path(_RESUME.value) if _RESUME.value else None
    if earlier is not None and not earlier.is_dir():
        raise InputError(f"--resume_from: {earlier}: no such folder")
    # A fresh machine: the earlier call's packed studies become the workdirs it lacks (a
    # workdir already there, on a warm machine, is newer and is kept).
    for (_, _, name), where in zip(studies, places):
        if earlier is not None and (earlier / f"{name}.tgz").is_file() and not where.exists():
            where.parent.mkdir(parents=True, exist_ok=True)
            unpack(earlier / f"{name}.tgz", where)
    out.mkdir(parents=True, exist_ok=True)
    if earlier is not None and (earlier / "benchmark_fp32.jsonl").is_file() \
            and not (out / "benchmark_fp32.jsonl").exists():
        shutil.copyfile(earlier / "benchmark_fp32.jsonl", out / "benchmark_fp32.jsonl")
    with open(out / "machine.txt", "w") as f:
        try:
            subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv"], stdout=f, stderr=subprocess.STDOUT, check=False)
        except OSError:
            f.write("no nvidia-smi\n")
            f.flush()
        subprocess.run(_python("-c", "import jax; print(jax.__version__, jax.devices())"),
                       stdout=f, stderr=subprocess.STDOUT, check=False)
    if _BENCHMARK.value and not any(p.exists() for p in places):  # the first call
        lines = benchmark(out, BENCHMARK_SHARE * _LIMIT.value)
    else:
        lines = []
    for (command, spec, name), where in zip(studies, places):
        # The time it may train: what is left, less its stop and packing.
        left = _LIMIT.value - (time.monotonic() - start) - STOP_GRACE_S - PACK_S
        need = max(MIN_COMPARE_S, largest_phase_s(spec, out, _SET.value))
        if left < need:
            lines.append(f"{command} {spec} not started: {left:.0f} s left to train within "
                         f"the {_LIMIT.value} s limit (less {STOP_GRACE_S + PACK_S} s to stop "
                         f"and pack), {need:.0f} s needed for its largest phase; run again")
            continue
        t = time.monotonic()
        log = out / ("compare_log.txt" if len(studies) == 1 else f"{name}_log.txt")
        status = study(command, spec, where, log, left, _SET.value)
        lines.append(f"{command} {spec} exit status {status}, {time.monotonic() - t:.0f} s "
                     "(143: stopped at the limit, and the same call again resumes it)")
        if where.is_dir():  # a study refused at once (bad input: its log says) made none
            pack(where, out / f"{where.name}.tgz")
        else:
            lines.append(f"{command} {spec} left no workdir to pack: see {log.name}")
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
