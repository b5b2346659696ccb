"""Greedy stack training: the loss falls, runs are deterministic and resume exactly."""

import jax
import numpy as np
import pytest

from conftest import two_layer_config as _config
from scae import checkpoint, figures, models, stack


@pytest.fixture(scope="module")
def images():
    x = np.load(figures.__file__.replace("figures.py", "assets/mnist.npz"))["train_images"][:192]
    return jax.numpy.asarray(x[..., None] / 255.0, jax.numpy.float32)


def _quiet(_):
    pass


def test_loss_decreases_and_runs_are_deterministic(tmp_path, images):
    config = _config(epochs=(4, 1), learning_rate=0.05)
    a = stack.pretrain(config, images, images[:64], tmp_path / "a", log=_quiet)
    b = stack.pretrain(config, images, images[:64], tmp_path / "b", log=_quiet)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(a), models.params_of(b))
    records = figures.read_jsonl(tmp_path / "a" / "pretrain" / "metrics.jsonl")
    layer1 = [r for r in records if r["layer"] == 1]
    assert [r["epoch"] for r in layer1] == [1, 2, 3, 4]
    assert layer1[-1]["train_mse"] < layer1[0]["train_mse"]
    assert layer1[-1]["val_mse"] < layer1[0]["val_mse"]


def test_resume_after_interruption_gives_the_same_parameters(tmp_path, images, monkeypatch):
    config = _config()
    reference = stack.pretrain(config, images, images[:64], tmp_path / "ref", log=_quiet)

    saves = []
    real_save = checkpoint.Checkpoints.save

    def save_then_die(self, step, state, record):
        real_save(self, step, state, record)
        saves.append(step)
        if len(saves) == 2:  # layer 1, mid-epoch 1... then killed
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stack.pretrain(config, images, images[:64], tmp_path / "run", log=_quiet)
    monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
    logs = []
    resumed = stack.pretrain(config, images, images[:64], tmp_path / "run", log=logs.append)
    assert any("resuming at step" in m for m in logs)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 models.params_of(reference), models.params_of(resumed))
    # The per-epoch records survive the kill too (times differ; losses do not).
    keys = ("layer", "epoch", "step", "train_mse", "val_mse")
    ref = figures.read_jsonl(tmp_path / "ref" / "pretrain" / "metrics.jsonl")
    run = figures.read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")
    assert len(ref) == len(run) == 3
    for r, q in zip(ref, run):
        assert [r[k] for k in keys[:3]] == [q[k] for k in keys[:3]]
        np.testing.assert_allclose([r[k] for k in keys[3:]], [q[k] for k in keys[3:]], rtol=1e-5)
    # A finished stack is kept, not retrained.
    logs = []
    stack.pretrain(config, images, images[:64], tmp_path / "run", log=logs.append)
    assert sum("finished earlier" in m for m in logs) == 2
    loaded = stack.from_workdir(tmp_path / "run", config, 1)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(loaded),
                 models.params_of(resumed))


def test_per_seed_stacks_differ_and_are_reproducible(tmp_path, images):
    config = _config(epochs=(1, 1))
    one = stack.pretrain(config, images, images[:64], tmp_path / "a", log=_quiet, seed_index=1)
    again = stack.pretrain(config, images, images[:64], tmp_path / "b", log=_quiet, seed_index=1)
    zero = stack.pretrain(config, images, images[:64], tmp_path / "a", log=_quiet)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(one), models.params_of(again))
    assert not np.allclose(one.layers[0].w[...], zero.layers[0].w[...])
    assert (tmp_path / "a" / "pretrain" / "seed1" / "metrics.jsonl").is_file()
    assert (tmp_path / "a" / "pretrain" / "metrics.jsonl").is_file()
