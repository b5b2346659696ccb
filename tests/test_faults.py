"""Divergence stops a run cleanly, naming where, and the learning-rate retries recover from
it; killing runs is tested in test_pipelines.py (it shares that file's reference run)."""

import jax.numpy as jnp
import numpy as np
import pytest

import configs.mnist
from scae import atomic, compare, inputs, retry, stack


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


def test_halving_lr_rescues_resumes_and_gives_up(tmp_path):
    path = tmp_path / "cell.lr_scale.json"
    calls, logs = [], []

    def train(scale):  # diverges above a quarter of the rate
        calls.append(scale)
        if scale > 0.3:
            raise FloatingPointError(f"diverged at x{scale}")
        return scale

    assert retry.halving_lr(train, path, retries=3, log=logs.append) == 0.25
    assert calls == [1.0, 0.5, 0.25] and len(logs) == 2 and "diverged at x0.5" in logs[1]
    assert retry.read_scale(path) == 0.25
    calls.clear()
    assert retry.halving_lr(train, path, retries=3, log=logs.append) == 0.25
    assert calls == [0.25]  # a rerun starts from the rate that last worked
    with pytest.raises(FloatingPointError, match="x0.5"):
        retry.halving_lr(train, tmp_path / "other.json", retries=1, log=logs.append)


def test_finetune_divergence_names_the_run_and_retries(tiny_npz_module, tmp_path):
    config = configs.mnist.get_config("smoke")
    config.data.source = f"npz:{tiny_npz_module}"
    config.data.validation_size = 60
    config.data.pretrain_size = 0
    config.model.activation = "relu"
    config.finetune.optimizer = "sgd"
    config.finetune.learning_rate = 1e30
    config.finetune.divergence_retries = 2
    data = inputs.build(config.data, config.seed)
    logs = []
    with pytest.raises(FloatingPointError,
                       match=r"random run at 50 labels, seed 0: .* epoch \d+ by step \d+"):
        compare._run_group(config, data, None, 50, "random", [0, 1], tmp_path, logs.append)
    assert sum("retrying with the learning rate x" in m for m in logs) == 2
    assert retry.read_scale(tmp_path / "ckpt" / "50_random_s0-1.lr_scale.json") == 0.25
    ckpts = list((tmp_path / "ckpt" / "50_random_s0-1").glob("*"))
    assert all(p.name.isdigit() for p in ckpts)  # only finished checkpoints, if any


def test_sweep_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    keep = [tmp_path / "compare" / "runs.jsonl", tmp_path / "pretrain" / "ckpt" / "layer1" / "8"
            / "state" / "data", tmp_path / "notes.tmp", tmp_path / ".lock"]
    debris = [tmp_path / "compare" / ".runs.jsonl.k3j2.tmp",
              tmp_path / "pretrain" / ".loss.png.x8q.tmp",
              tmp_path / "pretrain" / "ckpt" / "layer1" / "12.orbax-checkpoint-tmp"]
    for p in keep + debris[:2]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (debris[2] / "state").mkdir(parents=True)
    assert sorted(atomic.sweep(tmp_path)) == sorted(debris)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in debris)


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    atomic.write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["runs.jsonl"]
