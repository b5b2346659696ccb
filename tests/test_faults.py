"""Divergence stops a run cleanly; killing runs is tested in test_pipelines.py (it shares
that file's reference run)."""

import jax.numpy as jnp
import numpy as np
import pytest

import configs.mnist
from scae import stack


def test_divergence_stops_with_the_layer_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    config = configs.mnist.get_config("smoke")
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 1e30
    config.model.activation = "relu"  # unbounded, so the huge steps overflow
    config.pretrain.epochs = (2, 1, 1)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    with pytest.raises(FloatingPointError, match=r"layer 1: .* epoch \d+ by step \d+"):
        stack.pretrain(config, x, x[:16], tmp_path, log=lambda _: None)
    ckpts = list((tmp_path / "pretrain" / "ckpt" / "layer1").glob("*"))
    assert all(p.name.isdigit() for p in ckpts)  # only finished checkpoints, if any


def test_divergence_retries_halve_the_learning_rate_and_remember_it(tmp_path):
    config = configs.mnist.get_config("smoke")
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 1e30
    config.model.activation = "relu"
    config.pretrain.divergence_retries = 2
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    logs = []
    with pytest.raises(FloatingPointError, match="layer 1"):
        stack.pretrain(config, x, x[:16], tmp_path, log=logs.append)
    assert sum("retrying with the learning rate x" in m for m in logs) == 2
    scale = (tmp_path / "pretrain" / "ckpt" / "layer1.lr_scale.json").read_text()
    assert '"lr_scale": 0.25' in scale
    # A rerun starts from the remembered rate and has no retries left.
    logs = []
    with pytest.raises(FloatingPointError):
        stack.pretrain(config, x, x[:16], tmp_path, log=logs.append)
    assert not any("retrying" in m for m in logs)
