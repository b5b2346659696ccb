"""Runs survive SIGKILL and divergence: a killed command, rerun, ends where an uninterrupted
run ends, without redoing finished work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import configs.mnist
from scae import figures, stack

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/mnist.py:smoke"]


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def run(module: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipelines.{module}", *SMOKE,
                           f"--workdir={workdir}", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def kill_when(module: str, workdir: Path, marker: str) -> str:
    """Starts the command and SIGKILLs it as soon as ``marker`` appears on its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", f"pipelines.{module}", *SMOKE,
                             f"--workdir={workdir}"], cwd=ROOT, env=_env(),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, deadline = "", time.time() + 600
    os.set_blocking(proc.stderr.fileno(), False)
    while time.time() < deadline and proc.poll() is None:
        chunk = proc.stderr.read() or ""
        seen += chunk
        if marker in seen:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return seen
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{marker!r} never appeared:\n{seen[-2000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("reference")
    proc = run("compare", w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


def _stack(w: Path):
    return stack.load(configs.mnist.get_config("smoke"), w, 1)


@pytest.mark.slow
@pytest.mark.parametrize("marker,redone_never", [
    ("layer 2: CAE", "layer 1 epoch"),  # between layers: layer 1 finished
    ("layer 3:  50%", "layer 2 epoch"),  # during a layer, after its periodic checkpoint
    ("random at 100 labels", "random at"),  # during fine-tuning of the next arm
])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, reference, marker,
                                                        redone_never):
    w = tmp_path / "w"
    kill_when("compare", w, marker)
    again = run("compare", w)
    assert again.returncode == 0, again.stderr[-3000:]
    assert redone_never not in again.stderr, again.stderr[-3000:]
    for a, b in zip(_stack(reference), _stack(w)):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    keys = ("label_size", "arm", "seed", "best_epoch", "val_error", "test_error", "subset")
    ref = figures.read_jsonl(reference / "compare" / "runs.jsonl")
    got = figures.read_jsonl(w / "compare" / "runs.jsonl")
    assert [[r[k] for k in keys] for r in ref] == [[r[k] for k in keys] for r in got]


def test_divergence_stops_with_the_layer_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    config = configs.mnist.get_config("smoke")
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 1e30
    config.pretrain.epochs = (2, 1, 1)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    with pytest.raises(FloatingPointError, match=r"layer 1: .* epoch \d+ at step \d+"):
        stack.pretrain(config, x, x[:16], tmp_path, log=lambda _: None)
    ckpts = list((tmp_path / "pretrain" / "ckpt" / "layer1").glob("*"))
    assert all(p.name.isdigit() for p in ckpts)  # only finished checkpoints, if any
