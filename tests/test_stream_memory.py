"""Pretraining from a stream holds bounded memory: one CAE layer, a fixed number of steps, on a
generated set of 2,000,000 MNIST-size images on disk and on one of 50,000, reaches a peak
resident memory within 200 MB of each other (issue 37; the numbers measured here are in
docs/scaling.md, "Data that streams from disk").

It writes 1.6 GB of images and runs the pretrain command twice, minutes in all, so it runs only
when asked for: ``python -m pytest -q -n 1 tests/test_stream_memory.py -m stream_memory -s``
(``-s`` shows the two peaks).
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.stream_memory

ROOT = Path(__file__).resolve().parents[1]
SIZES = (50_000, 2_000_000)
STEPS = 200  # the command is killed as it writes its first checkpoint, after these steps
BOUND_MB = 200


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    if "stream_memory" not in (request.config.option.markexpr or ""):
        pytest.skip("writes 1.6 GB and runs for minutes: run with -m stream_memory")


def write_images(path: Path, num: int, chunk: int = 100_000) -> Path:
    """``num`` MNIST training digits drawn with replacement, as a uint8 (N, 28, 28, 1) .npy,
    written a chunk at a time."""
    digits = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"]
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (num, 28, 28, 1)})
        for start in range(0, num, chunk):
            f.write(digits[rng.integers(0, len(digits), min(chunk, num - start))].tobytes())
    return path


def peak_rss_mb(images: Path, workdir: Path) -> float:
    """The peak resident memory (MB) of ``pipelines.pretrain`` pretraining one CAE layer on
    ``images`` for :data:`STEPS` steps of 100 images: the process is killed at its first
    checkpoint (tests/kill_at.py), and its peak read from the kernel's account of it."""
    # Batches of 100 and calls of 50 steps divide the epochs of both sets alike, so both runs
    # train the same chunks and stop at the same step.
    cmd = [sys.executable, str(ROOT / "tests" / "kill_at.py"), "os.mkdir", r"ckpt/layer1/\d+",
           "1", "pipelines.pretrain", "--config=configs/mnist.py:smoke",
           f"--config.data.unlabelled_source=npy:{images}", "--config.data.pretrain_size=0",
           "--config.pretrain.layers=1", "--config.pretrain.batch_size=100",
           "--config.pretrain.steps_per_call=50",
           f"--config.pretrain.checkpoint_every_steps={STEPS}", f"--workdir={workdir}"]
    with open(workdir.with_suffix(".log"), "w+") as log:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    assert "killed at os.mkdir" in out and f"/layer1/{STEPS}" in out, out[-3000:]
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def test_peak_memory_does_not_grow_with_the_streamed_set(tmp_path):
    peaks = {}
    for num in SIZES:
        images = write_images(tmp_path / f"images_{num}.npy", num)
        peaks[num] = peak_rss_mb(images, tmp_path / f"work_{num}")
        images.unlink()
        print(f"\npeak resident memory, {num} images: {peaks[num]:.0f} MB")
    assert abs(peaks[SIZES[1]] - peaks[SIZES[0]]) < BOUND_MB, peaks
