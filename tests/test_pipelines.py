"""The commands end to end: outputs, resume, and bad input (one line, exit 2, nothing lost)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import configs.mnist
from scae import figures, stack

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


@pytest.fixture(scope="module")
def smoke_compare(tmp_path_factory) -> Path:
    """An uninterrupted smoke compare: the reference for the kill tests."""
    w = tmp_path_factory.mktemp("smoke") / "w"
    proc = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


@pytest.mark.slow
def test_smoke_compare_writes_every_output_and_resumes(smoke_compare):
    w = smoke_compare
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


def kill_when(module: str, workdir: Path, marker: str) -> str:
    """Starts the smoke command and SIGKILLs it as soon as ``marker`` appears on stderr."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", f"pipelines.{module}",
                             "--config=configs/mnist.py:smoke", f"--workdir={workdir}"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen, hit = [], threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read(64), ""):
            seen.append(chunk)
            if marker in "".join(seen[-40:]):
                hit.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not hit.wait(timeout=600):
        proc.kill()
        pytest.fail(f"{marker!r} never appeared:\n{''.join(seen)[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "".join(seen)


def _same_stack(a: Path, b: Path) -> None:
    config = configs.mnist.get_config("smoke")
    for pa, pb in zip(stack.load(config, a, 1), stack.load(config, b, 1)):
        for name in pa:
            np.testing.assert_allclose(pa[name], pb[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_matches_the_uninterrupted_run(smoke_compare, tmp_path):
    w = tmp_path / "w"
    # Between layers, then in the middle of a layer (after its periodic checkpoint), then
    # during fine-tuning: each rerun keeps what was finished.
    kill_when("pretrain", w, "layer 2: CAE")
    kill_when("pretrain", w, "layer 3:  50%")
    kill_when("compare", w, "random at 100 labels")
    again = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    for redone in ("layer 1 epoch", "layer 2 epoch", "layer 3 epoch", "random at"):
        assert redone not in again.stderr, again.stderr[-3000:]
    _same_stack(smoke_compare, w)
    keys = ("label_size", "arm", "seed", "best_epoch", "val_error", "test_error", "subset")
    ref = figures.read_jsonl(smoke_compare / "compare" / "runs.jsonl")
    got = figures.read_jsonl(w / "compare" / "runs.jsonl")
    assert [[r[k] for k in keys] for r in ref] == [[r[k] for k in keys] for r in got]


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


def test_overwrite_replaces_the_results_of_a_different_config(tmp_path):
    w = tmp_path / "w"
    first = run("pretrain", "--config=configs/mnist.py:smoke", "--config.pretrain.layers=0",
                f"--workdir={w}")
    assert first.returncode == 0, first.stderr[-2000:]
    (w / "compare").mkdir()
    (w / "compare" / "runs.jsonl").write_text("{}\n")
    args = ("--config=configs/mnist.py:smoke", "--config.pretrain.layers=0",
            "--config.model.fc_width=8", f"--workdir={w}")
    assert_clean_failure(run("pretrain", *args), "model.fc_width")
    assert (w / "compare" / "runs.jsonl").exists()
    again = run("pretrain", *args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (w / "compare").exists()
    assert json.loads((w / "config.json").read_text())["model"]["fc_width"] == 8
