"""The commands end to end: outputs, resume, and bad input (one line, exit 2, nothing lost)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", f"pipelines.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


def assert_clean_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.slow
def test_smoke_compare_writes_every_output_and_resumes(tmp_path):
    w = tmp_path / "w"
    proc = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["config.json", "pretrain/metrics.jsonl", "pretrain/loss.png",
                 "pretrain/filters_layer1.png", "pretrain/filters_layer3.png",
                 "pretrain/reconstructions_layer2.png", "compare/runs.csv", "compare/summary.csv",
                 "compare/summary.md", "compare/error_vs_labels.png", "compare/curves.png",
                 "compare/filters_conv1.png", "compare/embedding.png"]:
        assert (w / name).is_file() and (w / name).stat().st_size > 0, name
    for k in (1, 2, 3):
        assert (w / "pretrain" / "ckpt" / f"layer{k}").is_dir()
    rows = list(csv.DictReader(open(w / "compare" / "runs.csv")))
    assert len(rows) == 2 * 3  # seeds x arms at one label size
    assert {r["arm"] for r in rows} == {"random", "pretrained", "frozen"}
    assert "p (pretrained)" in (w / "compare" / "summary.md").read_text()

    before = (w / "compare" / "runs.jsonl").read_text()
    again = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stderr
    assert "test error" not in again.stderr  # no run was redone
    assert (w / "compare" / "runs.jsonl").read_text() == before

    vis = run("visualize", f"--workdir={w}")
    assert vis.returncode == 0, vis.stderr[-3000:]
    assert (w / "figures" / "filters_conv1_compared.png").is_file()
    assert (w / "figures" / "filters_layer2.png").is_file()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A workdir with a config.json and a results file, to check nothing is overwritten."""
    w = tmp_path_factory.mktemp("finished")
    (w / "compare").mkdir()
    (w / "compare" / "runs.jsonl").write_text('{"seed": 0}\n')
    proc = run("pretrain", "--config=configs/mnist.py:smoke", "--config.pretrain.layers=0",
               f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


@pytest.mark.parametrize("args,words", [
    (["--config.pretrain.bogus=1"], ["bogus"]),
    (["--config.pretrain.batch_size=abc"], ["batch_size"]),
    (["--config.pretrain.batch_size=0"], ["config.pretrain.batch_size"]),
    (["--config.pretrain.decoder=magic"], ["config.pretrain.decoder"]),
    (["--config.data.source=npz:/nonexistent/mnist.npz"], ["/nonexistent/mnist.npz"]),
    (["--config.data.source=cifar10"], ["cifar10"]),
    (["--config.compare.label_sizes=(100000,)"], ["label_sizes"]),
    (["--config.model.features=(8,8)"], ["config.model.kernel_sizes"]),
    (["--config.model.features=(16,8,8)"], ["model.features"]),  # differs from the workdir's
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_workdir(finished, args, words):
    before = snapshot(finished)
    proc = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={finished}", *args)
    assert_clean_failure(proc, *words)
    assert snapshot(finished) == before


def test_bad_config_file_and_preset(tmp_path):
    assert_clean_failure(run("pretrain", "--config=configs/nope.py", f"--workdir={tmp_path}"),
                         "nope.py")
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:huge",
                             f"--workdir={tmp_path}"), "huge")
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:smoke"), "--workdir")
    assert not any(tmp_path.iterdir())


def test_corrupt_data_file_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    w = tmp_path / "w"
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:smoke",
                             f"--config.data.source=npz:{bad}", f"--workdir={w}"), str(bad))
    assert not w.exists()


def test_benchmark_prints_one_json_line():
    proc = run("benchmark", "--workload=cae", "--layer=3", "--batch=8", "--steps=2",
               "--repeats=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("workload", "layer", "arch", "batch", "img_per_s", "gflop_per_s"):
        assert key in out
    assert out["layer"] == 3 and out["img_per_s"] > 0
    assert_clean_failure(run("benchmark", "--workload=gan"), "workload")
