"""Several processes (jax.distributed, a localhost coordinator, 1 CPU device each, gloo
collectives): the same records as one process on as many devices; process 0 alone writes;
a signal or a kill in one process ends all of them; a rerun resumes.

The end-to-end tests are ``slow``: each two-process run of the smoke comparison compiles its
programs in both processes (about 2 minutes on 2 shared cores)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scae import atomic
from scae import workdir as workdir_lib
from scae.errors import InputError
from scae.report import plotting
from scae.train import parallel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"--config={ROOT / 'configs' / 'mnist.py'}:smoke"
TIMEOUT_S = 900


@pytest.fixture
def not_writer():
    atomic.set_writer(False)
    try:
        yield
    finally:
        atomic.set_writer(True)


def test_a_process_that_is_not_the_writer_writes_nothing(tmp_path, not_writer):
    """Every write, removal and sweep of scae.atomic, a figure's save and the workdir's lock
    are skipped at the root in a process other than process 0."""
    import matplotlib.pyplot as plt

    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    atomic.write_text(kept, "new")
    atomic.write_jsonl(tmp_path / "runs.jsonl", [{"a": 1}])
    with atomic.replacing(tmp_path / "x.npy") as tmp:
        tmp.write_bytes(b"data")  # the caller writes somewhere; nothing arrives at the path
    (tmp_path / f".stray{atomic.TMP_SUFFIX}").write_text("")
    assert atomic.sweep(tmp_path) == [] and atomic.sweep_beside(kept) == []
    atomic.remove_tree(kept)
    plotting.save(plt.figure(), tmp_path / "figure.png")
    workdir_lib.lock(tmp_path / "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".stray{atomic.TMP_SUFFIX}",
                                                         "kept.txt"]
    assert kept.read_text() == "old"


def test_one_process_needs_no_coordination(monkeypatch):
    """Without a multi-process environment nothing is joined, and the coordination calls are
    no-ops; a malformed process count is one line of bad input, before JAX is asked."""
    for name in ("JAX_COORDINATOR_ADDRESS", "SCAE_DISTRIBUTED", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
    parallel.barrier("x")
    parallel.tell_others(2, "nothing to tell")
    parallel.finish()
    assert parallel.agreed(True) is True and parallel.agreed(False) is False
    assert parallel.peer_lost(RuntimeError("Gloo all-reduce failed")) is None
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(InputError, match="JAX_NUM_PROCESSES='two'"):
        parallel.initialize_distributed()


# What JAX's client writes through the C library's stderr as it aborts: the coordination
# service's error (in process 0, which hosts it), the client's error and fatal lines, and the
# fatal line's stack trace.
_SERVICE_ERROR = (b"E1207 05:55:35.710484   24153 coordination_service.cc:1549] [71146826] Use "
                  b"error polling to propagate the following error to all tasks: UNAVAILABLE: "
                  b"The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe "
                  b"tasks have crashed. Check the task logs for an earlier error.\n")
_POLLED = (b"E1207 05:55:35.712414   24164 coordination_service_agent.cc:289] Polled an error "
           b"from coordination service (this can be an error from this or another task).\n")
_FATAL = (b"F1207 05:55:35.713273   24164 client.h:80] Terminating process because the JAX "
          b"distributed service detected fatal errors. This most likely indicates that another "
          b"task died. absl::Status: %s\n*** Check failure stack trace: ***\n"
          b"    @     0x7f39fb240634  absl::log_internal::LogMessage::SendToLog()\n")
_HEARTBEATS = (b"UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):"
               b"\n1\nThe tasks have crashed.\n")
_UNREACHABLE = (b"UNAVAILABLE: Failed to send RPC to coordination service. Either the leader "
                b"task was preempted/died/restarted unexpectedly or this task is experiencing "
                b"network issues.\nAdditional GRPC error information: Socket closed\n")


def _forwarded(chunks: list[bytes], process: int, monkeypatch, capfd) -> tuple[str, list[str]]:
    """What the C library's stderr forwarder passes on to descriptor 2 when the runtime
    writes ``chunks`` in process ``process`` of 2, and the lines it ends the process with."""
    ended: list[str] = []
    monkeypatch.setattr(parallel, "_lost", ended.append)
    monkeypatch.setattr(parallel, "_processes", 2)
    monkeypatch.setattr(parallel.jax, "process_index", lambda: process)
    read_end, write_end = os.pipe()
    forwarder = threading.Thread(target=parallel._forward_c_stderr, args=(read_end,))
    forwarder.start()
    for chunk in chunks:
        os.write(write_end, chunk)
    os.close(write_end)
    forwarder.join(30)
    os.close(read_end)
    assert not forwarder.is_alive()
    return capfd.readouterr().err, ended


def test_the_runtime_end_after_a_lost_process_becomes_one_line(monkeypatch, capfd):
    """JAX's client aborts with an error, a fatal line and a stack trace when the coordination
    service reports a lost process or stops answering; the forwarder drops all of it and ends
    the process with one line naming which process was lost. Other lines pass on in order."""
    warning = b"W1207 05:55:30.000000   24153 cpu_client.cc:12] a warning\n"
    out, ended = _forwarded([warning, _SERVICE_ERROR, _POLLED, _FATAL % _HEARTBEATS,
                             b"    @     0x7f39f72eb505  std::_Function_handler<>::_M_invoke()\n"],
                            0, monkeypatch, capfd)
    assert out == warning.decode()
    assert ended == ["process 1 of 2 stopped answering (its heartbeats stopped: killed, or its "
                     "machine lost); rerun every process to resume"]
    # In process 1 when process 0 is gone; the message split over two writes.
    fatal = _FATAL % _UNREACHABLE
    out, ended = _forwarded([_POLLED + fatal[:100], fatal[100:]], 1, monkeypatch, capfd)
    assert out == "" and ended == ["process 0 of 2 (the coordinator of this run) stopped "
                                   "answering (killed, or its machine lost); rerun every "
                                   "process to resume"]


def test_a_coordination_error_with_no_fatal_end_is_passed_on(monkeypatch, capfd):
    """An error line of the coordination service that no fatal line follows (within
    HOLD_S, or before the stream closes) is passed on, with what came after it, in order."""
    monkeypatch.setattr(parallel, "HOLD_S", 0.0)
    out, ended = _forwarded([_POLLED + b"after\n", b"later\n", b"a tail"], 0, monkeypatch,
                            capfd)
    assert out == (_POLLED + b"after\nlater\na tail").decode() and ended == []


def test_a_lost_coordinator_ends_a_collective_error_with_its_line(monkeypatch):
    """A runtime error (a gloo collective, a barrier) in a process whose coordinator no longer
    answers ends with the coordinator's line; with the coordinator answering, a gloo error is
    the generic peer line, and other errors are no peer's."""
    import jax

    class Client:
        def __init__(self, answer: str):
            self.answer = answer

        def key_value_try_get(self, key):
            raise jax.errors.JaxRuntimeError(self.answer)

    ended: list[str] = []
    monkeypatch.setattr(parallel, "_lost", ended.append)
    monkeypatch.setattr(parallel, "_processes", 2)
    monkeypatch.setattr(parallel.jax, "process_index", lambda: 1)
    gloo = jax.errors.JaxRuntimeError("Gloo all-reduce failed: Connection closed by peer")
    monkeypatch.setattr(parallel, "_client", lambda: Client("UNAVAILABLE: Socket closed"))
    line = parallel.peer_lost(gloo)
    assert line.startswith("process 0 of 2 (the coordinator of this run) stopped answering")
    assert ended == [line]
    monkeypatch.setattr(parallel, "_client", lambda: Client("NOT_FOUND: Config key not found"))
    assert parallel.peer_lost(gloo).startswith("another process of this run stopped answering")
    assert parallel.peer_lost(jax.errors.JaxRuntimeError("INTERNAL: a bug")) is None
    assert ended == [line]


# --- end to end: python -m pipelines.compare in two processes -------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "SCAE_DISTRIBUTED", "SLURM_NTASKS"):
        if name not in extra:
            env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: Path, logs: Path, command: str = "compare") -> list[subprocess.Popen]:
    """Process 0 and 1 of a two-process ``command`` (smoke preset) on ``workdir``, their stderr
    in ``logs``."""
    port, procs = _free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    for i in (0, 1):
        env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        with open(logs / f"p{i}.err", "w") as err, open(logs / f"p{i}.out", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", f"pipelines.{command}", CONFIG, f"--workdir={workdir}"],
                cwd=ROOT, env=env, stdout=out, stderr=err))
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[int]:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _wait_for_line(procs: list[subprocess.Popen], log: Path, text: str) -> None:
    """Returns once ``text`` appears in ``log`` (a process's stderr), the event a test acts
    on; fails if the processes end first."""
    deadline = time.monotonic() + TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        assert all(p.poll() is None for p in procs), f"ended before {text!r}"
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.05)


def _errors(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if line.startswith(("error:", "F1", "E1", "Traceback"))]


def _records(workdir: Path) -> list[dict]:
    """compare/runs.jsonl without what differs between two runs of the same work: times,
    speeds and the git state."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if "time" not in k and "per_s" not in k and not k.startswith("git")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(r) for r in atomic.read_jsonl(workdir / "compare" / "runs.jsonl")]


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> list[dict]:
    """The records of the smoke comparison in one process on 2 forced host devices."""
    workdir = tmp_path_factory.mktemp("one") / "w"
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                   "--xla_force_host_platform_device_count=2"]))
    proc = subprocess.run([sys.executable, "-m", "pipelines.compare", CONFIG,
                           f"--workdir={workdir}"], cwd=ROOT, env=_env(XLA_FLAGS=flags),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(workdir)
    assert len(records) == 6  # 3 arms x 2 seeds at 100 labels
    return records


@pytest.mark.heavy
@pytest.mark.slow
def test_two_processes_give_the_records_of_one_process_on_two_devices(tmp_path, one_process):
    workdir = tmp_path / "w"
    procs = _start(workdir, tmp_path / "logs")
    assert _wait(procs) == [0, 0], [(tmp_path / "logs" / f"p{i}.err").read_text()[-3000:]
                                    for i in (0, 1)]
    _assert_same(_records(workdir), one_process)
    # Process 0 alone wrote the summary and printed it; the lock is given back.
    assert "| labels |" in (tmp_path / "logs" / "p0.out").read_text()
    assert "| labels |" not in (tmp_path / "logs" / "p1.out").read_text()
    assert json.loads((workdir / "machine.json").read_text())["sessions"] == 1
    assert not list(workdir.rglob(f"*{atomic.TMP_SUFFIX}"))


@pytest.mark.heavy
@pytest.mark.slow
def test_a_signal_or_a_kill_in_one_process_ends_both_and_a_rerun_resumes(tmp_path,
                                                                        one_process):
    """SIGTERM to process 1 mid-run: both end at once with one line each and status 143.
    Rerun, then SIGKILL process 1 mid-run: process 0 ends with one line (exit 75) within
    seconds. A third run resumes and finishes with the records of one process."""
    workdir, logs = tmp_path / "w", tmp_path / "logs"

    procs = _start(workdir, logs / "term")
    _wait_for_line(procs, logs / "term" / "p0.err", "cell 2/3")
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert _wait(procs) == [143, 143]
    ended_s = time.monotonic() - t0
    print(f"SIGTERM to process 1: both ended {ended_s:.2f} s later")
    assert ended_s < 15, ended_s  # the signal's grace (4 s) and the coordinated exit
    p0, p1 = _errors(logs / "term" / "p0.err"), _errors(logs / "term" / "p1.err")
    assert len(p0) == 1 and p0[0].startswith("error: process 1 of 2 ended: interrupted"), p0
    assert len(p1) == 1 and p1[0].startswith("error: interrupted"), p1
    done_before = len(atomic.read_jsonl(workdir / "compare" / "runs.jsonl"))
    assert done_before >= 2  # the first cell was recorded

    procs = _start(workdir, logs / "kill")
    _wait_for_line(procs, logs / "kill" / "p0.err", "cell 2/2")  # resumed: 2 cells were left
    procs[1].kill()
    t0 = time.monotonic()
    assert _wait(procs) == [parallel.PEER_LOST_STATUS, -signal.SIGKILL]
    ended_s = time.monotonic() - t0
    print(f"SIGKILL to process 1: process 0 ended {ended_s:.2f} s later")
    assert ended_s < 2 * parallel.HEARTBEAT_S, ended_s
    p0 = _errors(logs / "kill" / "p0.err")
    assert len(p0) == 1 and p0[0].startswith("error: another process of this run stopped"), p0

    procs = _start(workdir, logs / "rerun")
    assert _wait(procs) == [0, 0], (logs / "rerun" / "p0.err").read_text()[-3000:]
    _assert_same(_records(workdir), one_process)


@pytest.mark.heavy
@pytest.mark.slow
def test_when_process_0_vanishes_the_others_end_with_one_line_and_a_rerun_resumes(tmp_path):
    """SIGKILL of process 0, which hosts JAX's coordination service, while process 1 starts
    layer 2 of a smoke pretraining: process 1 ends with exit status 75 and one line naming
    process 0 as the coordinator, no C++ log, no traceback, where JAX alone would abort with
    its fatal log and a stack trace. A rerun of both resumes after layer 1 and finishes."""
    workdir, logs = tmp_path / "w", tmp_path / "logs"
    procs = _start(workdir, logs / "kill", "pretrain")
    err = logs / "kill" / "p1.err"
    # Process 1 has drawn layer 2's bar: it now compiles and trains, and prints nothing more
    # until a chunk of steps ends, which takes process 0's part in it.
    _wait_for_line(procs, err, "layer 2:   0%")
    before = err.stat().st_size
    procs[0].kill()
    t0 = time.monotonic()
    assert _wait(procs) == [-signal.SIGKILL, parallel.PEER_LOST_STATUS], \
        err.read_text(errors="replace")[-3000:]
    print(f"SIGKILL to process 0: process 1 ended {time.monotonic() - t0:.2f} s later")
    with open(err, "rb") as f:
        f.seek(before)
        after = f.read().decode(errors="replace")
    lines = [line for line in re.split(r"[\r\n]", after) if line.strip()]
    assert lines == ["error: process 0 of 2 (the coordinator of this run) stopped answering "
                     "(killed, or its machine lost); rerun every process to resume"], after
    assert _errors(err) == lines, err.read_text(errors="replace")[-3000:]

    procs = _start(workdir, logs / "rerun", "pretrain")
    assert _wait(procs) == [0, 0], (logs / "rerun" / "p0.err").read_text()[-3000:]
    rerun = (logs / "rerun" / "p0.err").read_text(errors="replace")
    assert "layer 1: finished earlier" in rerun and "layer 3 epoch 1" in rerun, rerun[-3000:]


# --- a stream read in shards: each process reads the images of its own devices ---------------


def _stream_run(images: Path, out: Path, workdir: Path, processes: int,
                devices: int = 2) -> None:
    """tests/stream_shard.py in one process on ``devices`` forced host devices, or in two
    processes of one device each; its records in ``out``."""
    out.mkdir(parents=True)
    script = [sys.executable, str(ROOT / "tests" / "stream_shard.py"), str(images), str(out),
              str(workdir)]
    if processes == 1:
        flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                       f"--xla_force_host_platform_device_count={devices}"]))
        envs = [_env(XLA_FLAGS=flags)]
    else:
        port = _free_port()
        envs = [_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID=str(i)) for i in range(processes)]
    procs = []
    for i, env in enumerate(envs):
        with open(out / f"p{i}.err", "w") as err:
            procs.append(subprocess.Popen(script, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=err))
    assert _wait(procs) == [0] * processes, [
        (out / f"p{i}.err").read_text()[-3000:] for i in range(processes)]


@pytest.mark.heavy
@pytest.mark.slow
def test_each_process_reads_only_its_shard_of_a_stream(tmp_path):
    """A streamed pretraining in two processes (one device each): with the batch spread, each
    process reads its half of every batch; with three seeds spread (padded to four), process 0
    reads seeds 0 and 1's batches and process 1 seed 2's; each image once per chunk. The
    parameters are bit for bit those of one process on two devices, which reads every chunk
    whole, and those of one device up to float rounding (the batch spread sums the gradient
    over the devices)."""
    from stream_shard import CASES

    digits = np.load(ROOT / "scae" / "assets" / "mnist.npz")["train_images"][:192, ..., None]
    np.save(tmp_path / "digits.npy", digits)
    _stream_run(tmp_path / "digits.npy", tmp_path / "one", tmp_path / "w1", 1)
    _stream_run(tmp_path / "digits.npy", tmp_path / "two", tmp_path / "w2", 2)
    _stream_run(tmp_path / "digits.npy", tmp_path / "device", tmp_path / "w0", 1, devices=1)
    for spread in CASES:
        whole = json.loads((tmp_path / "one" / f"reads_{spread}_p0.json").read_text())
        shards = [json.loads((tmp_path / "two" / f"reads_{spread}_p{i}.json").read_text())
                  for i in (0, 1)]
        assert len(whole) == 4 and all(len(s) == len(whole) for s in shards)  # 4 chunks
        for chunk, (a, b) in zip(whole, zip(*shards)):
            assert len(set(a)) == len(a) and len(set(b)) == len(b)  # each image once
            assert set(a) | set(b) == set(chunk)  # the shards cover the chunk
            assert len(a) < len(chunk) and len(b) < len(chunk), (spread, len(a), len(b))
            if spread == "batch":  # one seed: halves of its batches, 3 steps of 32
                assert len(a) == len(b) == 48 and not set(a) & set(b)
            else:  # process 1 holds seed 2 (and a padding copy, which reads nothing)
                assert len(b) == 96
        one = np.load(tmp_path / "one" / f"params_{spread}_p0.npz")
        for i in (0, 1):
            two = np.load(tmp_path / "two" / f"params_{spread}_p{i}.npz")
            assert sorted(two) == sorted(one)
            for k in one:
                np.testing.assert_array_equal(two[k], one[k], err_msg=f"{spread} {k}")
        device = np.load(tmp_path / "device" / f"params_{spread}_p0.npz")
        for k in one:
            np.testing.assert_allclose(one[k], device[k], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{spread} {k}")
