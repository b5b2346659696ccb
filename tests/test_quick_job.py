"""pipelines.quick_job: the timed run (timestamped log, resident memory), the compare's
arguments, the test-error table of finished runs, and bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines import quick_job

ROOT = Path(__file__).resolve().parents[1]

# A child that prints a line, two progress updates (tqdm's \r) and a finished bar, holds about
# 64 MB for a second, and ends with status 3.
CHILD = r"""
import sys, time
print('layer 1: start', flush=True)
sys.stdout.write('layer 1:  50%|##   | 1/2 [00:01, 1.0step/s]\r'); sys.stdout.flush()
sys.stdout.write('layer 1: 100%|#####| 2/2 [00:02, 1.0step/s]\n'); sys.stdout.flush()
block = bytearray(64 << 20)
time.sleep(1.2)
print('done', flush=True)
sys.exit(3)
"""


def test_timed_run_writes_the_timestamped_log_and_the_resident_memory(tmp_path):
    wall, peak_mb, status = quick_job.timed_run([sys.executable, "-c", CHILD], tmp_path,
                                                str(tmp_path), dict(os.environ))
    assert status == 3 and wall >= 1.2 and peak_mb >= 64
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line[8:] for line in lines] == [
        "layer 1: start", "layer 1: 100%|#####| 2/2 [00:02, 1.0step/s]", "done"]
    seconds = [float(line[:7]) for line in lines]
    assert seconds == sorted(seconds) and seconds[-1] >= 1.2
    rss = [line.split() for line in (tmp_path / "rss.txt").read_text().splitlines()]
    assert len(rss) >= 2 and max(int(kb) for _, kb in rss) // 1024 == peak_mb


def test_the_compare_gets_the_quick_preset_or_the_config_given():
    assert quick_job.compare_args(["--job_dir=x"]) == ["--config=configs/mnist.py:quick"]
    assert quick_job.compare_args(["--config=configs/mnist.py:smoke", "--job_dir=x",
                                   "--config.model.compute_dtype=bfloat16"]) == [
        "--config=configs/mnist.py:smoke", "--config.model.compute_dtype=bfloat16"]
    assert quick_job.compare_args(["--config", "configs/cifar10.py:quick"]) == [
        "--config", "configs/cifar10.py:quick"]


def _runs(folder: Path, errors: dict[str, list[float]], summary: str | None = None) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "runs.jsonl", "w") as f:
        for arm, values in errors.items():
            for seed in reversed(range(len(values))):  # the table sorts by seed
                f.write(json.dumps({"arm": arm, "seed": seed, "test_error": values[seed]}) + "\n")
    if summary:
        (folder / "summary.txt").write_text(summary + "\n")
    return folder


def test_table_has_one_column_per_run_and_the_summaries(tmp_path):
    a = _runs(tmp_path / "a" / "run" / "compare", {"random": [6.0, 7.0], "frozen": [8.0, 8.5]})
    _runs(tmp_path / "b", {"random": [5.5, 6.5], "frozen": [8.25, 8.75]},
          "wall 153.4 s, peak rss 1349 MB")
    lines = quick_job.error_table([("before", str(a.parents[1])), ("after", str(tmp_path / "b"))])
    assert lines == [
        "| arm | before | after |",
        "| --- | --- | --- |",
        "| random | 6.00, 7.00: 6.50 ± 0.71 | 5.50, 6.50: 6.00 ± 0.71 |",
        "| frozen | 8.00, 8.50: 8.25 ± 0.35 | 8.25, 8.75: 8.50 ± 0.35 |",
        "after: wall 153.4 s, peak rss 1349 MB"]


def test_bad_input_is_one_line_and_status_2_before_anything_runs(tmp_path):
    (tmp_path / "kept").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    for args, word in (([f"--job_dir={tmp_path}"], "not empty"), ([], "--job_dir"),
                       ([f"--job_dir={tmp_path / 'new'}", f"--code={tmp_path}"], "--code"),
                       ([f"--table=a={tmp_path}"], "runs.jsonl")):
        proc = subprocess.run([sys.executable, "-m", "pipelines.quick_job", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: ") and word in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
