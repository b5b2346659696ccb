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
--workdir for a single study), packed into <config>_<preset>.tgz (whatever --workdir is
called) without its fine-tuning checkpoints (its pretrained stacks' are kept: a resume does
not train them again), started or not.
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
chunk of steps); then per study its log <name>_log.txt, summary.txt (each study's exit
status and packed size) and <name>.tgz (mnist_PRESET.tgz by default), the workdir without
its fine-tuning checkpoints: `tar xzf` it and `python -m pipelines.publish
--workdir=mnist_PRESET --out=results/...`. The workdirs stay between calls on a warm
machine; on a fresh one, --resume_from brings them back. Each step runs in a process of its
own, so that this one never holds the GPU. A SIGINT or SIGTERM to this process is passed on
to the study under way, which saves; it is packed, the summary written, and the call ends
with 130 / 143. Exit status 1: every study ran, but one ended in an error (its status in
summary.txt, its log says why); 143 from the stop at the limit is none.
"""

from __future__ import annotations

import time

# Before the imports below (about 2 s): the deadline counts from here at the latest.
_IMPORTED = time.monotonic()

import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import flags  # noqa: E402

from pipelines import common, usage  # noqa: E402
from scae import atomic, interrupt  # noqa: E402
from scae import config as cfglib  # noqa: E402
from scae import workdir as workdir_lib  # noqa: E402
from scae.errors import InputError  # noqa: E402
from scae.study import cost  # noqa: E402
from scae.study import sweep as sweep_lib  # noqa: E402

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


# How often the wait for a study looks for a signal sent to this process alone (scae.interrupt
# ends the process GRACE_S after a signal unless it is acted on).
POLL_S = 1.0
# What the records may carry between calls in all: the machine's carry is 64 MiB, of which
# the CIFAR-10 copy takes about 20 MB.
CARRY_MB = 40
# The steps benchmark_fp32.jsonl has when complete (pipelines.benchmark --all).
BENCH_STEPS = {(arch, workload, layer) for arch in ("mnist", "cifar10")
               for workload, layer in (("cnn", None), ("cae", 1), ("cae", 2), ("cae", 3))}
# The exit statuses of a study that are no error: done, and stopped by SIGTERM (at the limit,
# or forwarded from this process), having saved; the same call again resumes it.
STOPPED = (143, -signal.SIGTERM)
INTERRUPTED = (129, 130)  # SIGHUP, SIGINT passed on from this process: saved too


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def process_start() -> float:
    """The :func:`time.monotonic` time this process started (Linux: /proc/self/stat), where
    --limit counts from; else when this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        age = (float(Path("/proc/uptime").read_text().split()[0])
               - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: its start, in ticks
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    now = time.monotonic()
    return now - age if 0 <= age <= now - _IMPORTED + 3600 else _IMPORTED


def benchmark_complete(path: Path) -> bool:
    """Whether ``path`` is a benchmark_fp32.jsonl with every step timed (not cut short)."""
    try:
        rows = atomic.read_jsonl(path)
    except (OSError, ValueError, InputError):
        return False
    return BENCH_STEPS <= {(r.get("arch"), r.get("workload"), r.get("layer"))
                           for r in rows if isinstance(r, dict) and "img_per_s" in r}


def benchmark(out: Path, seconds: float = math.inf, keep: Sequence[str] = ()) -> list[str]:
    """The benchmark files of the module's docstring, within ``seconds`` in all: a process
    still timing then is stopped (its record keeps the lines written so far) and the ones
    after it do not start. The records named in ``keep`` (complete ones brought from an
    earlier call) are kept as they are. What was cut, one line each."""
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
        if name in keep:
            continue
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


def _kept(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A packed member, unless it lies in a fine-tuning checkpoint (a ``ckpt`` folder outside
    ``pretrain/``: the run records replace it). A stack's layer checkpoints (``pretrain/ckpt/
    layer<k>``, ``pretrain/seed<i>/ckpt``, ``pretrain/ckpt_seeds``, a sweep's ``stacks/*/
    pretrain/...``) are the stack itself, which a resume would otherwise train again."""
    parts = Path(member.name).parts
    if "ckpt" not in parts:
        return member
    return member if "pretrain" in parts[:parts.index("ckpt")] else None


def pack(workdir: Path, tgz: Path) -> int:
    """``workdir`` as ``tgz``, under the name ``tgz`` has (``<name>.tgz`` holds ``<name>/``,
    which :func:`unpack` puts back wherever asked), without its fine-tuning checkpoints
    (:func:`_kept`); written beside ``tgz`` and renamed over it, so that a failed write leaves
    the one there. Its size in bytes."""
    with atomic.replacing(tgz) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(workdir, arcname=tgz.name.removesuffix(".tgz"), filter=_kept)
    return tgz.stat().st_size


def compare(preset: str, workdir: Path, log: Path, seconds: float) -> int:
    """The comparison of ``configs/mnist.py:preset`` for at most ``seconds``
    (:func:`study`)."""
    return study("compare", f"configs/mnist.py:{preset}", workdir, log, seconds)


class _Stop:
    """Holds scae.interrupt's watchdog back (:func:`scae.interrupt.deferred`) from the moment
    a signal to this process is seen until :func:`main` has stopped the study under way,
    packed the workdirs and written the summary; the interruption is raised when it ends."""

    def __init__(self):
        self.held: contextlib.ExitStack | None = None
        self.child: subprocess.Popen | None = None

    def hold(self) -> None:
        if self.held is None:
            self.held = contextlib.ExitStack()
            self.held.enter_context(interrupt.deferred())

    def release(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held.close()  # raises the interruption (the envelope's exit 130 / 143)

    def end(self, status: int, line: str) -> None:
        """scae.interrupt's watchdog ends this process: the study's process goes too."""
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(OSError):
                child.kill()


_stop = _Stop()


def study(command: str, config: str, workdir: Path, log: Path, seconds: float,
          overrides: Sequence[str] = ()) -> int:
    """Runs ``python -m pipelines.<command>`` (with ``--config.KEY=VALUE`` for each
    ``KEY=VALUE`` of ``overrides``) for at most ``seconds``, then SIGTERM (it saves what it
    has and exits 143; a rerun resumes it) and, ``STOP_GRACE_S`` later, SIGKILL; its exit
    status. A SIGINT, SIGTERM or SIGHUP sent to this process is passed on to it the same way
    (it runs in a process group of its own, so that a signal to the whole group reaches it
    once, through this process, never twice: a second signal would end it unsaved)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(_python("-m", f"pipelines.{command}", f"--config={config}",
                                        *(f"--config.{o}" for o in overrides),
                                        f"--workdir={workdir}"),
                                stdout=f, stderr=subprocess.STDOUT, process_group=0)
        _stop.child = proc
        try:
            return _stopped(proc, time.monotonic() + seconds)
        finally:
            _stop.child = None
            if proc.poll() is None:  # this process is failing: leave nothing running
                proc.kill()
                proc.wait()


def _stopped(proc: subprocess.Popen, end: float) -> int:
    """``proc``'s exit status: it ends by itself, or is stopped at ``end`` or when this
    process receives a signal (which it gets too, under :class:`_Stop`'s hold)."""
    while True:
        received = interrupt.pending()
        if received is not None:
            _stop.hold()
            proc.send_signal(received.signum)
            break
        left = end - time.monotonic()
        if left <= 0:
            proc.terminate()
            break
        try:
            return proc.wait(timeout=min(POLL_S, left))
        except subprocess.TimeoutExpired:
            pass
    try:
        return proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def check_study(command: str, spec: str, overrides: Sequence[str] = ()) -> None:
    """An InputError unless ``spec``'s config, with ``overrides``, is one ``command`` runs:
    what ``python -m pipelines.<command>`` checks before it trains (for a sweep, its sweep
    section: arms, seeds, label size, and every point of its grid and schedule)."""
    try:
        config = usage.config_with(spec, overrides)
    except InputError as e:
        try:
            usage.config_with(spec, ())
        except InputError as alone:
            raise InputError(f"--studies: {alone}") from None
        raise InputError(f"--set: {e}") from None
    where = f"--studies: {command}:{spec}" + (" with --set" if overrides else "")
    try:
        cfglib.validate(config, command)
        if command == "sweep":
            if "sweep" not in config:
                raise InputError("--config: has no sweep section (config.sweep.axes, "
                                 "label_size, seeds); start from configs/cifar10_sweep.py")
            sweep_lib.arms_of(config)
            sweep_lib.seeds_of(config)
            sweep_lib.label_size_of(config)
            grid, schedule = sweep_lib.grid_and_schedule(config)
            recipes = {sweep_lib.point_id(sweep_lib.recipe_of(p)): sweep_lib.recipe_of(p)
                       for p in grid}
            for point in [*grid, *({**r, **alt} for r in recipes.values() for alt in schedule)]:
                sweep_lib.apply(config, point)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    except (KeyError, AttributeError, TypeError, IndexError, ValueError) as e:
        raise InputError(f"{where}: not a config for this project ({type(e).__name__}: "
                         f"{e})") from None


def parse_studies(items: list[str], overrides: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(command, config spec, name) of each COMMAND:CONFIG item; bad ones, repeated ones, two
    with one name (one workdir), and ``overrides`` (``KEY=VALUE``) that do not apply to an
    item's config (:func:`check_study`), are InputErrors."""
    if not items:
        raise InputError("--studies: expected at least one COMMAND:CONFIG item (leave the flag "
                         "out for the compare of configs/mnist.py:--preset)")
    out = []
    for item in items:
        command, _, spec = item.partition(":")
        if command not in COMMANDS or not spec:
            raise InputError(f"--studies: {item!r} is not COMMAND:CONFIG with COMMAND one of "
                             f"{', '.join(COMMANDS)}")
        path, _, preset = spec.partition(":")
        if not Path(path).is_file():
            raise InputError(f"--studies: {path}: no such config file")
        name = Path(path).stem + (f"_{preset}" if preset else "")
        for other, _, other_name in out:
            if other_name == name:
                raise InputError(f"--studies: {item!r} repeats {other!r}" if other == item else
                                 f"--studies: {item!r} and {other!r} would share the workdir "
                                 f"runs/{name}; run them in separate calls")
        check_study(command, spec, overrides)  # every study's config, before anything runs
        out.append((item, spec, name))
    return [(item.partition(":")[0], spec, name) for item, spec, name in out]


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


def _status(status: int, log: str) -> str:
    """What a study's exit status means, for its summary line."""
    if status == 0:
        return "done"
    if status in STOPPED:
        return "stopped by SIGTERM, saved: the same call again resumes it"
    if status in INTERRUPTED:
        return (f"stopped by {signal.Signals(status - 128).name}, saved: the same call again "
                "resumes it")
    if status == -signal.SIGKILL:
        return (f"killed: it did not save within {STOP_GRACE_S} s of its SIGTERM; its work "
                f"since its last checkpoint is lost (see {log})")
    return f"an error: see {log}"


def main(config, workdir: Path | None) -> None:
    """The command, in the envelope of :mod:`pipelines.common` (config is not used)."""
    start = STARTED if STARTED is not None else time.monotonic()
    if not _OUT.value:
        raise InputError("--records: required")
    if _LIMIT.value < 1:
        raise InputError(f"--limit: expected whole seconds >= 1, got {_LIMIT.value}")
    out, preset = Path(_OUT.value), _PRESET.value
    items = _STUDIES.value if _STUDIES.value is not None else [f"compare:configs/mnist.py:{preset}"]
    studies = parse_studies(items, _SET.value)
    places = [_where(name, workdir, len(studies)) for _, _, name in studies]
    earlier = Path(_RESUME.value) if _RESUME.value else None
    if earlier is not None and not earlier.is_dir():
        raise InputError(f"--resume_from: {earlier}: no such folder")
    workdir_lib.check_output(out, "--records", folder=True)  # before anything is unpacked
    # A fresh machine: the earlier call's packed studies become the workdirs it lacks (a
    # workdir already there, on a warm machine, is newer and is kept).
    for (_, _, name), where in zip(studies, places):
        if earlier is not None and (earlier / f"{name}.tgz").is_file() and not where.exists():
            where.parent.mkdir(parents=True, exist_ok=True)
            unpack(earlier / f"{name}.tgz", where)
    out.mkdir(parents=True, exist_ok=True)
    bench = out / "benchmark_fp32.jsonl"
    if earlier is not None and benchmark_complete(earlier / "benchmark_fp32.jsonl") \
            and not benchmark_complete(bench) and earlier.resolve() != out.resolve():
        shutil.copyfile(earlier / "benchmark_fp32.jsonl", bench)
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
        # A complete record brought by --resume_from is kept; a partial one is timed again.
        lines = benchmark(out, BENCHMARK_SHARE * _LIMIT.value,
                          keep=("benchmark_fp32.jsonl",) if benchmark_complete(bench) else ())
    else:
        lines = []
    failed = False
    interrupt.on_end(_stop.end)
    try:
        for (command, spec, name), where in zip(studies, places):
            # The time it may train: what is left, less its stop and packing.
            left = _LIMIT.value - (time.monotonic() - start) - STOP_GRACE_S - PACK_S
            need = max(MIN_COMPARE_S, largest_phase_s(spec, out, _SET.value))
            if interrupt.pending() is not None:
                _stop.hold()
                lines.append(f"{command} {spec} not started: this call was interrupted")
            elif left < need:
                lines.append(f"{command} {spec} not started: {left:.0f} s left to train "
                             f"within the {_LIMIT.value} s limit (less {STOP_GRACE_S + PACK_S} "
                             f"s to stop and pack), {need:.0f} s needed for its largest phase; "
                             "run again")
            else:
                t = time.monotonic()
                log = out / f"{name}_log.txt"
                status = study(command, spec, where, log, left, _SET.value)
                failed |= status not in (0, *STOPPED, *INTERRUPTED)
                lines.append(f"{command} {spec} exit status {status}, "
                             f"{time.monotonic() - t:.0f} s: {_status(status, log.name)}")
                if not where.is_dir():  # a study refused at once (bad input) made none
                    lines.append(f"{command} {spec} left no workdir to pack: see {log.name}")
            if where.is_dir():  # started or not: its workdir (unpacked or trained) is kept
                size = pack(where, out / f"{name}.tgz")
                lines.append(f"{command} {spec} packed as {name}.tgz: {size / 1e6:.1f} MB")
        carried = sum(p.stat().st_size for p in out.glob("*.tgz")) / 2**20
        if carried > CARRY_MB:
            lines.append(f"the packed workdirs take {carried:.0f} MiB, more than the "
                         f"{CARRY_MB} MiB a resume can carry with the data: bring fewer back")
        summary = "\n".join(lines)
        atomic.write_text(out / "summary.txt", summary + "\n")
        print(summary, flush=True)
    finally:
        interrupt.on_end(None)
        _stop.release()  # a signal received: exit 130 / 143 (the envelope's one line)
    if failed:
        raise SystemExit(1)


# When the process started, where run as a command (the deadline counts from there).
STARTED: float | None = None

if __name__ == "__main__":
    STARTED = process_start()
    common.run(main, needs_config=False, needs_workdir=False)
