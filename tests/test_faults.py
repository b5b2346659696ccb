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
