"""Bounded memory: which layers cache their inputs, and evaluation in bounded batches."""

import importlib.resources
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import two_layer_config
from flax import nnx

import configs.mnist
from scae import api
from scae import config as cfglib
from scae.errors import InputError
from scae.models import modules as models
from scae.models import stack
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining
from scae.train import driver


def _paper_stack(dataset: str, channels: int) -> stack.Stack:
    c = api.make_config(dataset, "paper")
    return stack.Stack(stack.layer_specs(c, channels), c.model.pool_sizes, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dataset,channels,hw", [("mnist", 1, 28), ("cifar10", 3, 32)])
def test_auto_caches_only_where_reencoding_is_costly(dataset, channels, hw):
    s = _paper_stack(dataset, channels)
    # Layer 2 re-encodes (layer 1's forward pass is ~1-3% of its step); layer 3 keeps its
    # inputs (layers 1-2 forward cost several times its own step).
    cached = [pretraining.caches_inputs("auto", s.specs, s.pools, hw, k) for k in (2, 3)]
    assert cached == [False, True]
    for always in ("always", True):  # True: a config recorded before 'auto'
        assert all(pretraining.caches_inputs(always, s.specs, s.pools, hw, k) for k in (2, 3))
    for never in ("never", False):
        assert not any(pretraining.caches_inputs(never, s.specs, s.pools, hw, k) for k in (2, 3))


@pytest.mark.parametrize("bad", ["yes", "Auto", "false"])
def test_cache_features_refuses_other_values(bad):
    c = configs.mnist.get_config("smoke")
    c.pretrain.cache_features = bad
    with pytest.raises(InputError, match="cache_features"):
        cfglib.validate(c)


def _small_config(cache):
    return two_layer_config(epochs=(1, 1), cache_features=cache)


def test_cached_and_reencoded_inputs_train_the_same_stack(tmp_path):
    x = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"][:96]
    images = jnp.asarray(x[..., None] / 255.0, jnp.float32)
    quiet = lambda _: None
    a = pretraining.pretrain(_small_config("always"), images, images[:32], tmp_path / "a",
                             log=quiet)
    b = pretraining.pretrain(_small_config("never"), images, images[:32], tmp_path / "b",
                             log=quiet)
    for pa, pb in zip(jax.tree.leaves(models.params_of(a)), jax.tree.leaves(models.params_of(b))):
        np.testing.assert_allclose(np.asarray(pa), np.asarray(pb), rtol=1e-4, atol=1e-6)


def test_vmapped_evaluation_is_batched_and_exact(monkeypatch):
    spec = models.CNNSpec.from_config(_small_config("auto").model, (28, 28, 1))
    nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(3)]
    graphdef, _ = models.split(nets[0])
    params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((50, 28, 28, 1), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 50))
    sizes = []
    real = driver.batched_apply

    def spy(fn, x, batch_size):
        sizes.append(batch_size)
        return real(fn, x, batch_size)

    monkeypatch.setattr(finetuning, "EVAL_BATCH", 24)
    monkeypatch.setattr(driver, "batched_apply", spy)
    errs = jax.vmap(finetuning.error_fn(graphdef, 3), in_axes=(0, None, None))(
        params, images, labels)
    assert sizes == [8]  # 24 images at once over 3 seeds: 8 per seed
    for i, net in enumerate(nets):
        whole = 100.0 * np.mean(np.argmax(np.asarray(net(images)), -1) != np.asarray(labels))
        np.testing.assert_allclose(float(errs[i]), whole, atol=1e-4)



def test_release_freed_memory_runs_after_every_phase(monkeypatch):
    calls = []
    monkeypatch.setattr(driver, "release_freed_memory", lambda: calls.append(1) or True)
    x = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"][:64]
    images = jnp.asarray(x[..., None] / 255.0, jnp.float32)
    pretraining.pretrain(_small_config("auto"), images, images[:32], Path(tempfile.mkdtemp()),
                   log=lambda _: None)
    assert len(calls) == 2  # one per layer


def test_release_drops_every_compiled_program_and_they_run_again():
    client = jax.devices()[0].client
    f = jax.jit(lambda v: jnp.sin(v) @ v.T)
    x = jnp.arange(16.0).reshape(4, 4)
    want = np.asarray(f(x))
    np.asarray(x * 3)  # an eager operation: a program of its own
    before = len(client.live_executables())
    driver.release_freed_memory()
    after = len(client.live_executables())  # only those that something else still holds
    assert after <= before - 2
    np.testing.assert_array_equal(f(x), want)  # traced before; compiled (or loaded) again
    assert len(client.live_executables()) == after + 1
