"""pipelines.gpu_run: the packed workdir without checkpoints, the comparison stopped at the
limit, a call with too little time left, the overrides every study gets, the first call's
benchmark, a resume from the packed records, and bad input before anything is written."""

from __future__ import annotations

import io
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
from absl import flags

from pipelines import gpu_run
from scae.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "pipelines.gpu_run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pack_keeps_the_stacks_and_leaves_the_fine_tuning_checkpoints_out(tmp_path):
    """A stack's layer checkpoints are the stack (a resume without them trains it again);
    the fine-tuning ones are replaced by the run records. The pack is named for the study,
    whatever the workdir's own name (--workdir), and holds the study's name."""
    work = tmp_path / "w"
    kept = ["config.json", "compare/runs.jsonl", "pretrain/ckpt/layer1/state",
            "pretrain/seed1/ckpt/layer2/state", "pretrain/ckpt_seeds/layer1_s0-1/state",
            "stacks/abc/pretrain/ckpt/layer3/state"]
    for name in (*kept, "compare/ckpt/1000_random_s0/state", "compare/cells/a/ckpt/1/state"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    size = gpu_run.pack(work, tmp_path / "mnist_paper.tgz")
    assert size == (tmp_path / "mnist_paper.tgz").stat().st_size
    with tarfile.open(tmp_path / "mnist_paper.tgz") as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert files == sorted(f"mnist_paper/{name}" for name in kept)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["mnist_paper.tgz"]


def test_a_failed_pack_leaves_the_earlier_one_whole(tmp_path):
    """Written beside and renamed: a full disk keeps the good pack there, and no
    truncated file."""
    work = tmp_path / "study"
    (work / "a").mkdir(parents=True)
    (work / "a" / "x").write_text("x")
    (tmp_path / "out").mkdir()
    good = tmp_path / "out" / "study.tgz"
    good.write_bytes(b"the earlier pack")

    def add(self, *a, **k):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as m:  # tarfile is one module: keep the patch short
        m.setattr(gpu_run.tarfile.TarFile, "add", add)
        with pytest.raises(Exception, match="space"):
            gpu_run.pack(work, good)
    assert good.read_bytes() == b"the earlier pack"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["study.tgz"]


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


def test_the_benchmark_keeps_to_its_share_of_the_limit(tmp_path, monkeypatch):
    """A timing process still running when the share is spent is stopped (its lines so far
    kept), and the ones after it do not start; each is one line of the summary."""
    started = []

    def run(args, stdout, env=None, timeout=None, **kwargs):
        started.append(Path(stdout.name).name)
        if "--all" in args:
            stdout.write('{"partial": 1}\n')
            raise subprocess.TimeoutExpired(args, timeout)
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(gpu_run.subprocess, "run", run)
    cut = gpu_run.benchmark(tmp_path, 1000.0)
    assert started == ["benchmark_fp32.jsonl", *gpu_run.SEED_FLAGS]
    assert cut == ["benchmark benchmark_fp32.jsonl stopped at its share of the limit: partial"]
    assert (tmp_path / "benchmark_fp32.jsonl").read_text() == '{"partial": 1}\n'
    started.clear()
    cut = gpu_run.benchmark(tmp_path / "none", 0.0)
    assert started == [] and len(cut) == 1 + len(gpu_run.SEED_FLAGS)
    assert all(line.endswith("not started: its share of the limit was spent") for line in cut)


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
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    for item, word in (("train:configs/mnist.py:smoke", "COMMAND:CONFIG"),
                       ("compare:configs/none.py:smoke", "no such config file"),
                       ("compare:configs/mnist.py:huge", "--studies: config preset 'huge'"),
                       (f"compare:{tmp_path / 'broken.py'}", "--studies: --config: cannot load")):
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
    # No cifar10 rate in this record: unknown, so the study is not held back.
    assert gpu_run.largest_phase_s("configs/cifar10_sweep.py", out) == 0.0
    proc = _run(f"--records={out}", "--limit=100", "--nobenchmark",
                "--studies=compare:configs/mnist.py:paper,compare:configs/mnist.py:quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # (A workdir this checkout holds already from an earlier study is packed too.)
    first, second = [line for line in proc.stdout.splitlines() if " packed as " not in line]
    assert first.startswith("compare configs/mnist.py:paper not started") and "largest" in first
    assert second.startswith("compare configs/mnist.py:quick not started")  # 100 s < its need


@pytest.mark.heavy
@pytest.mark.slow
def test_a_deadline_cuts_a_study_that_a_later_call_finishes_from_its_packed_records(tmp_path):
    """A fresh machine has only what the last call brought back: the packed workdir, with the
    stack's checkpoints but not the fine-tuning ones. Unpacked by --resume_from, it resumes:
    the stack finished before the cut is kept, not trained again, the runs recorded before
    the cut are kept as they were, and the rest train."""
    out, w = tmp_path / "out", tmp_path / "mnist_smoke"
    # Enough fine-tuning steps that the limit falls inside them, given to every call alike.
    longer = "--set=finetune.epochs=2000"
    # 45 s to train: the limit less what the call holds back to stop and pack.
    limit = 45 + gpu_run.STOP_GRACE_S + gpu_run.PACK_S
    cut = _run(f"--records={out}", f"--limit={limit}", "--nobenchmark", f"--workdir={w}", longer,
               "--studies=compare:configs/mnist.py:smoke")
    assert cut.returncode == 0, cut.stderr[-2000:]
    if "exit status 0" in cut.stdout:
        pytest.skip("the smoke comparison finished inside the cut on this machine")
    assert "exit status 143" in cut.stdout or "exit status -15" in cut.stdout, cut.stdout
    fresh = tmp_path / "fresh"  # the next machine: the earlier records, no workdir
    with tarfile.open(out / "mnist_smoke.tgz") as tar:  # what --resume_from will unpack
        tar.extractall(tmp_path / "peek", filter="data")
    before = tmp_path / "peek" / "mnist_smoke" / "compare" / "runs.jsonl"
    kept = before.read_text().splitlines() if before.is_file() else []
    stack = "mnist_smoke/pretrain/metrics.jsonl"
    losses = lambda root: [(r["layer"], r["val_mse"])
                           for r in map(json.loads, (root / stack).open())]
    packed = losses(tmp_path / "peek")
    assert len(packed) == 3  # the stack was done before the cut, its checkpoints packed
    done = _run(f"--records={tmp_path / 'out2'}", "--limit=600", "--nobenchmark", longer,
                f"--resume_from={out}", f"--workdir={fresh / 'mnist_smoke'}",
                "--studies=compare:configs/mnist.py:smoke")
    assert done.returncode == 0 and "exit status 0" in done.stdout, done.stdout
    assert (fresh / "mnist_smoke" / "compare" / "summary.md").is_file()
    after = (fresh / "mnist_smoke" / "compare" / "runs.jsonl").read_text().splitlines()
    assert after[:len(kept)] == kept
    assert losses(fresh) == packed
    log = (tmp_path / "out2" / "mnist_smoke_log.txt").read_text()
    assert "layer 1: finished earlier" in log and "layer 1 epoch" not in log, log[-3000:]
    assert (tmp_path / "out2" / "mnist_smoke.tgz").is_file()


def test_a_sweep_is_budgeted_by_its_largest_phase_with_the_overrides_applied(tmp_path):
    """The sweep's largest phase is its longest full-label schedule; an override given to
    every study reaches the cost model as it reaches the commands."""
    rates = [{"workload": w, "layer": k, "arch": "cifar10", "img_per_s": 1000.0}
             for w, k in (("cnn", None), ("cae", 1), ("cae", 2), ("cae", 3))]
    (tmp_path / "benchmark_fp32.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rates))
    # 100 epochs of the 45,000-image pool (whole batches of 128), 3 seeds, at 1000 img/s.
    longest = 45000 // 128 * 128 * 100 * 3 / 1000
    assert gpu_run.largest_phase_s("configs/cifar10_sweep.py", tmp_path) == \
        pytest.approx(longest)
    halved = gpu_run.largest_phase_s("configs/cifar10_sweep.py", tmp_path,
                                     ["data.validation_size=27500"])
    assert halved == pytest.approx(22500 // 128 * 128 * 100 * 3 / 1000)


def test_every_study_gets_the_overrides_and_a_bad_one_stops_the_call_first(tmp_path,
                                                                          monkeypatch):
    calls = []

    class Proc:
        def __init__(self, args, **kwargs):
            calls.append(args)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    with monkeypatch.context() as m:  # subprocess is one module: the commands below need it
        m.setattr(gpu_run.subprocess, "Popen", Proc)
        gpu_run.study("sweep", "configs/cifar10_sweep.py", tmp_path / "w", tmp_path / "log", 5,
                      ["data.source=folder:data_cache/c.tar.gz", "compare.num_seeds=3"])
    (args,) = calls
    assert args[-3:] == ["--config.data.source=folder:data_cache/c.tar.gz",
                         "--config.compare.num_seeds=3", f"--workdir={tmp_path / 'w'}"]
    for item, word in (("data.sourc=x", "did you mean --config.data.source"),
                       ("compare.num_seeds=many", "num_seeds"), ("novalue", "KEY=VALUE")):
        proc = _run(f"--records={tmp_path / 'o'}", f"--set={item}", "--nobenchmark",
                    "--studies=compare:configs/mnist.py:smoke,sweep:configs/cifar10_sweep.py")
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: --set: ") and word in line, line
    assert not (tmp_path / "o").exists()


def test_the_benchmark_runs_on_the_first_call_only(tmp_path, monkeypatch):
    """The first call: no study's workdir exists yet. A later call (a workdir there) goes
    straight to the studies."""
    ran, studied = [], []
    monkeypatch.setattr(gpu_run, "benchmark", lambda out, seconds, **k: ran.append(out) or [])
    granted = []
    monkeypatch.setattr(gpu_run, "study", lambda command, spec, where, log, seconds, *a: (
        studied.append(where), granted.append(seconds), where.mkdir(parents=True,
                                                                    exist_ok=True))[-1] or 0)
    monkeypatch.setattr(gpu_run, "pack", lambda *a: 0)
    monkeypatch.setattr(gpu_run.subprocess, "run", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for name in ("a.py", "b.py"):
        (tmp_path / "configs" / name).write_text((ROOT / "configs" / "mnist.py").read_text())
    args = ["gpu_run", f"--records={tmp_path / 'o'}", "--limit=1000",
            "--studies=compare:configs/a.py,compare:configs/b.py"]
    try:
        for _ in range(2):
            flags.FLAGS.unparse_flags()
            flags.FLAGS(args)
            gpu_run.main(None, None)
    finally:
        flags.FLAGS.unparse_flags()
    assert ran == [tmp_path / "o"]
    assert studied == [Path("runs/a"), Path("runs/b")] * 2
    # Each study may train only until the call can still stop it, pack it and end in time.
    assert 0 < max(granted) <= 1000 - gpu_run.STOP_GRACE_S - gpu_run.PACK_S


def test_unpack_gives_back_the_packed_workdir_and_refuses_what_pack_never_makes(tmp_path):
    work = tmp_path / "a" / "study"
    for name, text in (("config.json", "c"), ("compare/runs.jsonl", "r"),
                       ("compare/cells/x/ckpt/1/state", "s")):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    gpu_run.pack(work, tmp_path / "study.tgz")
    gpu_run.unpack(tmp_path / "study.tgz", tmp_path / "b" / "study")
    got = {str(p.relative_to(tmp_path / "b" / "study")): p.read_text()
           for p in (tmp_path / "b" / "study").rglob("*") if p.is_file()}
    assert got == {"config.json": "c", "compare/runs.jsonl": "r"}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["study"]
    for member, kind in (("study/../evil", tarfile.REGTYPE), ("other/x", tarfile.REGTYPE),
                         ("study/link", tarfile.SYMTYPE)):
        bad = tmp_path / "bad.tgz"
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.type, info.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
        bad = bad.rename(tmp_path / "study.tgz")
        with pytest.raises(InputError, match="not part of a packed workdir"):
            gpu_run.unpack(bad, tmp_path / "c" / "study")
        assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    (tmp_path / "study.tgz").write_bytes(b"not a tar file")
    with pytest.raises(InputError, match="not a readable packed workdir"):
        gpu_run.unpack(tmp_path / "study.tgz", tmp_path / "d" / "study")


def test_resume_from_unpacks_the_missing_workdirs_and_skips_the_benchmark(tmp_path,
                                                                          monkeypatch):
    ran, studied = [], []
    monkeypatch.setattr(gpu_run, "benchmark", lambda out, seconds, **k: ran.append(out) or [])
    monkeypatch.setattr(gpu_run, "study", lambda command, spec, where, *a: studied.append(
        sorted(str(p.relative_to(where)) for p in where.rglob("*"))) or 143)
    monkeypatch.setattr(gpu_run.subprocess, "run", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for name in ("a.py", "b.py"):
        (tmp_path / "configs" / name).write_text((ROOT / "configs" / "mnist.py").read_text())
    earlier = tmp_path / "earlier"
    (tmp_path / "old" / "a").mkdir(parents=True)
    (tmp_path / "old" / "a" / "sweep.jsonl").write_text("{}\n")
    earlier.mkdir()
    gpu_run.pack(tmp_path / "old" / "a", earlier / "a.tgz")
    (earlier / "benchmark_fp32.jsonl").write_text(_bench_rows(1e9))
    args = ["gpu_run", f"--records={tmp_path / 'o'}", "--limit=1000",
            f"--resume_from={earlier}", "--studies=compare:configs/a.py,compare:configs/b.py"]
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(args)
        gpu_run.main(None, None)
        flags.FLAGS.unparse_flags()
        flags.FLAGS([*args[:3], f"--resume_from={tmp_path / 'none'}", args[4]])
        with pytest.raises(InputError, match="--resume_from: .*none: no such folder"):
            gpu_run.main(None, None)
    finally:
        flags.FLAGS.unparse_flags()
    assert ran == []  # a workdir was there: not the first call
    assert studied == [["sweep.jsonl"], []]  # a's records unpacked; b had none to unpack
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert "configs/b.py left no workdir to pack: see b_log.txt" in summary
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tgz")) == ["a.tgz"]
    assert (tmp_path / "o" / "benchmark_fp32.jsonl").read_text() == _bench_rows(1e9)


def _main(args: list[str]) -> None:
    """gpu_run.main with ``args`` as its flags (unparsed again after)."""
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["gpu_run", *args])
        gpu_run.main(None, Path(flags.FLAGS.workdir) if flags.FLAGS.workdir else None)
    finally:
        flags.FLAGS.unparse_flags()


def _copy_configs(tmp_path, *names):
    (tmp_path / "configs").mkdir()
    for name in names:
        (tmp_path / "configs" / name).write_text((ROOT / "configs" / "mnist.py").read_text())


def test_a_study_not_started_is_packed_into_the_new_records_all_the_same(tmp_path,
                                                                          monkeypatch):
    """Its workdir came from --resume_from; the records of this call carry it on, so that a
    resume from them does not start it again from nothing."""
    monkeypatch.setattr(gpu_run.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(gpu_run, "study", lambda *a: pytest.fail("no time: not started"))
    monkeypatch.chdir(tmp_path)
    _copy_configs(tmp_path, "a.py")
    (tmp_path / "old" / "a" / "compare").mkdir(parents=True)
    (tmp_path / "old" / "a" / "compare" / "runs.jsonl").write_text("{}\n")
    (tmp_path / "earlier").mkdir()
    gpu_run.pack(tmp_path / "old" / "a", tmp_path / "earlier" / "a.tgz")
    _main([f"--records={tmp_path / 'o'}", "--limit=1", f"--resume_from={tmp_path / 'earlier'}",
           "--studies=compare:configs/a.py"])
    assert (tmp_path / "runs" / "a" / "compare" / "runs.jsonl").is_file()
    with tarfile.open(tmp_path / "o" / "a.tgz") as tar:
        assert "a/compare/runs.jsonl" in tar.getnames()
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert "not started" in summary and "packed as a.tgz: " in summary


def test_a_workdir_named_by_the_flag_is_resumed_from_its_pack(tmp_path, monkeypatch):
    """--workdir=DIR packs as <study name>.tgz, which --resume_from finds and unpacks as the
    --workdir of the next call, whatever either is called."""
    seen = []

    def study(command, spec, where, log, seconds, *a):
        seen.append(sorted(str(p.relative_to(where)) for p in where.rglob("*"))
                    if where.exists() else None)
        (where / "compare").mkdir(parents=True, exist_ok=True)
        (where / "compare" / "runs.jsonl").write_text("{}\n")
        return 143

    monkeypatch.setattr(gpu_run.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(gpu_run, "study", study)
    monkeypatch.chdir(tmp_path)
    _copy_configs(tmp_path, "a.py")
    common = ["--limit=1000", "--nobenchmark", "--studies=compare:configs/a.py:smoke"]
    _main([f"--records={tmp_path / 'o1'}", f"--workdir={tmp_path / 'mine'}", *common])
    assert sorted(p.name for p in (tmp_path / "o1").glob("*.tgz")) == ["a_smoke.tgz"]
    _main([f"--records={tmp_path / 'o2'}", f"--workdir={tmp_path / 'fresh' / 'other'}",
           f"--resume_from={tmp_path / 'o1'}", *common])
    assert seen == [None, ["compare", "compare/runs.jsonl"]]
    assert "exit status 143" in (tmp_path / "o2" / "summary.txt").read_text()


def _bench_rows(rate=1.0):
    return "".join(json.dumps({"arch": a, "workload": w, "layer": k, "img_per_s": rate}) + "\n"
                   for a, w, k in sorted(gpu_run.BENCH_STEPS, key=str))


def test_a_complete_benchmark_record_brought_along_is_kept_and_a_partial_one_redone(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _copy_configs(tmp_path, "a.py")
    monkeypatch.setattr(gpu_run, "study", lambda *a: 0)
    for text, redone in ((_bench_rows(), False), (_bench_rows()[:200], True)):
        (tmp_path / "earlier").mkdir(exist_ok=True)
        (tmp_path / "earlier" / "benchmark_fp32.jsonl").write_text(text)
        started = []

        def run(args, stdout=None, **kwargs):
            if stdout is not None and "pipelines.benchmark" in args:
                started.append(Path(stdout.name).name)
                stdout.write('{"new": 1}\n')
            return subprocess.CompletedProcess(args, 0)

        out = tmp_path / f"o{int(redone)}"
        with monkeypatch.context() as m:
            m.setattr(gpu_run.subprocess, "run", run)
            _main([f"--records={out}", "--limit=1000", f"--resume_from={tmp_path / 'earlier'}",
                   "--studies=compare:configs/a.py"])
        assert ("benchmark_fp32.jsonl" in started) == redone
        assert set(started) >= set(gpu_run.SEED_FLAGS)
        assert (out / "benchmark_fp32.jsonl").read_text() == \
            ('{"new": 1}\n' if redone else text)


def test_records_that_cannot_be_a_folder_are_refused_before_anything_is_unpacked(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _copy_configs(tmp_path, "a.py")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "old" / "a").mkdir(parents=True)
    gpu_run.pack(tmp_path / "old" / "a", tmp_path / "earlier" / "a.tgz")
    (tmp_path / "file").write_text("x")
    for records, word in ((tmp_path / "file", "is a file"),
                          (tmp_path / "file" / "under", "which is a file")):
        with pytest.raises(InputError, match=f"--records .*{word}"):
            _main([f"--records={records}", f"--resume_from={tmp_path / 'earlier'}",
                   "--studies=compare:configs/a.py"])
    assert not (tmp_path / "runs").exists()


def test_study_specs_are_checked_whole_before_anything_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    for items, word in ((["sweep:configs/mnist.py:smoke"], "no sweep section"),
                        (["compare:configs/mnist.py:smoke"] * 2, "repeats"),
                        (["compare:configs/mnist.py:smoke", "sweep:configs/mnist.py:smoke"],
                         "would share the workdir runs/mnist_smoke"),
                        ([], "at least one")):
        with pytest.raises(InputError, match=word):
            gpu_run.parse_studies(items)
    with pytest.raises(InputError, match="--set: .*label_sizes"):
        gpu_run.parse_studies(["sweep:configs/cifar10_sweep.py"], ["compare.label_sizes=()"])
    assert gpu_run.parse_studies(["sweep:configs/cifar10_sweep.py"]) == [
        ("sweep", "configs/cifar10_sweep.py", "cifar10_sweep")]


def test_an_empty_studies_flag_is_bad_input(tmp_path):
    proc = _run(f"--records={tmp_path / 'o'}", "--studies=", "--nobenchmark")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert "--studies" in line
    assert not (tmp_path / "o").exists()


def test_a_study_in_error_gives_its_status_and_the_call_exits_1(tmp_path, monkeypatch):
    """Each study's line gives its own status; an error (not 0, nor the SIGTERM of the
    limit) makes the call's status 1, after every study has run and been packed. The logs
    are named for their studies."""
    statuses = iter([2, 143])
    logs = []

    def study(command, spec, where, log, *a):
        logs.append(log.name)
        where.mkdir(parents=True, exist_ok=True)
        return next(statuses)

    monkeypatch.setattr(gpu_run.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(gpu_run, "study", study)
    monkeypatch.chdir(tmp_path)
    _copy_configs(tmp_path, "a.py", "b.py")
    with pytest.raises(SystemExit) as e:
        _main([f"--records={tmp_path / 'o'}", "--limit=1000", "--nobenchmark",
               "--studies=compare:configs/a.py:smoke,compare:configs/b.py"])
    assert e.value.code == 1
    assert logs == ["a_smoke_log.txt", "b_log.txt"]
    lines = (tmp_path / "o" / "summary.txt").read_text().splitlines()
    assert "exit status 2" in lines[0] and "an error: see a_smoke_log.txt" in lines[0]
    assert "exit status 143" in lines[2] and "resumes it" in lines[2]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tgz")) == ["a_smoke.tgz", "b.tgz"]


FAKE_STUDY = """
import os, signal, sys, time
from pathlib import Path
if not any(a.startswith("--workdir=") for a in sys.argv):
    sys.exit(0)  # the jax line of machine.txt
work = Path(next(a for a in sys.argv if a.startswith("--workdir=")).partition("=")[2])
work.mkdir(parents=True, exist_ok=True)
def stop(signum, frame):
    (work / "saved").write_text(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(work / "pid").write_text(str(os.getpid()))
time.sleep(120)
"""

DRIVER = """
import sys
from pipelines import common, gpu_run
gpu_run._python = lambda *a: [sys.executable, FAKE, *a]
common.run(gpu_run.main, needs_config=False, needs_workdir=False)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_gpu_run_alone_stops_the_study_packs_it_and_ends(tmp_path, signum):
    """The study under way gets the signal, saves and ends; its workdir is packed, the
    summary written, and the call ends with the signal's status: no study left running."""
    fake = tmp_path / "fake_study.py"
    fake.write_text(FAKE_STUDY)
    work = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", f"FAKE = {str(fake)!r}\n" + DRIVER, f"--records={tmp_path / 'o'}",
         "--limit=300", "--nobenchmark", f"--workdir={work}",
         "--studies=compare:configs/mnist.py:smoke"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (work / "pid").is_file() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.1)
        assert (work / "pid").is_file(), proc.communicate(timeout=30)
        child = int((work / "pid").read_text())
        proc.send_signal(signum)  # this process alone, not its group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert (work / "saved").read_text() == str(int(signum))
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    with tarfile.open(tmp_path / "o" / "mnist_smoke.tgz") as tar:
        assert "mnist_smoke/saved" in tar.getnames()
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert f"exit status {128 + signum}" in summary, summary
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted"), stderr


def test_the_deadline_counts_from_the_process_start():
    """pytest and jax were imported before this test: the process is older than that."""
    assert 0.5 < time.monotonic() - gpu_run.process_start() < 86400
    assert gpu_run.process_start() <= gpu_run._IMPORTED
