"""Data parallelism: a step on 2 (forced host) devices equals the step on 1 device."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _steps(tmp_path: Path, devices: int) -> dict:
    out = tmp_path / f"d{devices}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={devices}".strip())
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "one_step.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.slow
def test_two_devices_step_equals_one_device_step(tmp_path):
    one, two = _steps(tmp_path, 1), _steps(tmp_path, 2)
    assert int(one.pop("devices")) == 1 and int(two.pop("devices")) == 2
    # On two devices the batch is split in two along its first axis, not replicated.
    assert int(one.pop("batch_shards")) == 1 and int(two.pop("batch_shards")) == 2
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=2e-5, atol=1e-6, err_msg=k)
    # The seeds mapped one after another train as the vmapped ones, on either mesh.
    for k in [k for k in one if k.startswith("seeds_map/")]:
        np.testing.assert_allclose(two[k], one[k.replace("map", "vmap", 1)], rtol=2e-5,
                                   atol=1e-6, err_msg=k)


def _spread(tmp_path: Path, devices: int, spread: str) -> dict:
    out = tmp_path / f"spread_{devices}_{spread}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={devices}".strip())
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "seed_spread.py"), str(out),
                           spread], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.slow
def test_seeds_spread_over_four_devices_equal_one_device(tmp_path):
    """2, 3 and 5 seeds (padded to a multiple of 4 and the copies dropped) over 4 devices, each
    device training its own seeds with no all-reduce, equal the same seeds on one device."""
    one, four = _spread(tmp_path, 1, "auto"), _spread(tmp_path, 4, "auto")
    assert str(one.pop("spread")) == "none" and str(four.pop("spread")) == "seeds"
    assert int(one.pop("devices")) == 1 and int(four.pop("devices")) == 4
    for k in [k for k in four if k.endswith("/all_reduce")]:
        assert not four.pop(k), k
        one.pop(k)
    assert one.keys() == four.keys()
    for k in one:
        np.testing.assert_allclose(four[k], one[k], rtol=2e-5, atol=1e-6, err_msg=k)
