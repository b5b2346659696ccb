"""Several processes (jax.distributed, a localhost coordinator, 1 CPU device each, gloo
collectives): the same records as one process on as many devices; process 0 alone writes;
a signal or a kill in one process ends all of them; a rerun resumes.

The end-to-end tests are ``slow``: each two-process run of the smoke comparison compiles its
programs in both processes (about 2 minutes on 2 shared cores)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def _start(workdir: Path, logs: Path) -> list[subprocess.Popen]:
    """Process 0 and 1 of a two-process compare on ``workdir``, their stderr in ``logs``."""
    port, procs = _free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    for i in (0, 1):
        env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        with open(logs / f"p{i}.err", "w") as err, open(logs / f"p{i}.out", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipelines.compare", CONFIG, f"--workdir={workdir}"],
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
