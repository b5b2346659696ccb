"""pipelines.gpu_run: the packed workdir without checkpoints, the comparison stopped at the
limit, a call with too little time left, and bad input before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jax
import pytest

from pipelines import gpu_run

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "pipelines.gpu_run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pack_leaves_the_checkpoints_out(tmp_path):
    work = tmp_path / "mnist_paper"
    for name in ("config.json", "compare/runs.jsonl", "pretrain/ckpt/0/state",
                 "compare/cells/a/ckpt/1/state"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    gpu_run.pack(work, tmp_path / "w.tgz")
    with tarfile.open(tmp_path / "w.tgz") as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert files == ["mnist_paper/compare/runs.jsonl", "mnist_paper/config.json"]


def test_the_benchmark_times_the_seed_paths_under_each_command_buffer_setting(tmp_path,
                                                                            monkeypatch):
    """One --ab=seeds process per XLA flag setting, each record under its own name, the
    caller's own XLA_FLAGS kept in front of the setting's."""
    calls = []

    def run(args, stdout, env=None, **kwargs):
        calls.append((args, Path(stdout.name).name, (env or os.environ).get("XLA_FLAGS", "")))
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(gpu_run.subprocess, "run", run)
    monkeypatch.setenv("XLA_FLAGS", "--xla_mine")
    gpu_run.benchmark(tmp_path)
    seeds = [(name, flags) for args, name, flags in calls if "--ab=seeds" in args]
    assert seeds == [(name, f"--xla_mine {flags}".strip())
                     for name, flags in gpu_run.SEED_FLAGS.items()]
    assert "WHILE" in gpu_run.SEED_FLAGS["seeds_cmdbuf_while.jsonl"]
    assert [name for args, name, _ in calls if "--all" in args] == ["benchmark_fp32.jsonl"]


def test_the_comparison_is_stopped_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command's folder: configs/ and pipelines/ are found from it
    t = time.monotonic()
    status = gpu_run.compare("smoke", tmp_path / "w", tmp_path / "log.txt", 1)
    # SIGTERM: the compare's own status, or the signal's where it came before its handler.
    assert status in (143, -signal.SIGTERM), (tmp_path / "log.txt").read_text()[-2000:]
    assert time.monotonic() - t < 60


def test_too_little_time_left_says_so_and_starts_no_comparison(tmp_path):
    out = tmp_path / "out"
    proc = _run(f"--records={out}", "--limit=1", "--nobenchmark", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("compare configs/mnist.py:paper not started")
    assert "run again" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", "summary.txt"]
    assert jax.__version__ in (out / "machine.txt").read_text()  # after nvidia-smi's lines
    assert not (tmp_path / "w").exists()


def test_bad_input_is_one_line_and_status_2_before_anything_is_written(tmp_path):
    for args, word in (([], "--records"), ([f"--records={tmp_path / 'o'}", "--limit=0"], "--limit"),
                       ([f"--records={tmp_path / 'o'}", "--preset=huge"], "preset")):
        proc = _run(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: ") and word in line
    assert list(tmp_path.iterdir()) == []


def test_bad_studies_are_one_line_and_status_2(tmp_path):
    for item, word in (("train:configs/mnist.py:smoke", "COMMAND:CONFIG"),
                       ("compare:configs/none.py:smoke", "no such config file")):
        proc = _run(f"--records={tmp_path / 'o'}", f"--studies={item}", "--nobenchmark")
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.splitlines()
        assert word in line, line


def test_a_study_whose_largest_phase_cannot_finish_is_not_started(tmp_path):
    """The cost model at this call's benchmark rates: the paper comparison's largest phase
    at 1 image per second needs days, so it is skipped and the next study is tried."""
    out = tmp_path / "out"
    out.mkdir()
    slow = [{"workload": w, "layer": k, "arch": "mnist", "img_per_s": 1.0}
            for w, k in (("cnn", None), ("cae", 1), ("cae", 2), ("cae", 3))]
    (out / "benchmark_fp32.jsonl").write_text("".join(json.dumps(r) + "\n" for r in slow))
    assert gpu_run.largest_phase_s("configs/mnist.py:paper", out) > 1e6
    assert gpu_run.largest_phase_s("configs/cifar10_sweep.py", out) == 0.0  # not a comparison
    proc = _run(f"--records={out}", "--limit=100", "--nobenchmark",
                "--studies=compare:configs/mnist.py:paper,compare:configs/mnist.py:quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.splitlines()
    assert first.startswith("compare configs/mnist.py:paper not started") and "largest" in first
    assert second.startswith("compare configs/mnist.py:quick not started")  # 100 s < its need


@pytest.mark.heavy
@pytest.mark.slow
def test_a_deadline_cuts_a_study_that_the_same_call_then_finishes(tmp_path):
    out, w = tmp_path / "out", tmp_path / "mnist_smoke"
    cut = _run(f"--records={out}", "--limit=45", "--nobenchmark", f"--workdir={w}",
               "--studies=compare:configs/mnist.py:smoke")
    assert cut.returncode == 0, cut.stderr[-2000:]
    if "exit status 0" in cut.stdout:
        pytest.skip("the smoke comparison finished inside the cut on this machine")
    assert "exit status 143" in cut.stdout or "exit status -15" in cut.stdout, cut.stdout
    done = _run(f"--records={out}", "--limit=600", "--nobenchmark", f"--workdir={w}",
                "--studies=compare:configs/mnist.py:smoke")
    assert done.returncode == 0 and "exit status 0" in done.stdout, done.stdout
    assert (w / "compare" / "summary.md").is_file() and (out / "mnist_smoke.tgz").is_file()
