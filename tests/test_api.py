"""The public Python API: the README's example as written, the Stack value (save/load,
encode at every depth), the transfer the commands use, and the frozen arm."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest
from flax import nnx

import configs.mnist
import scae
from scae.data import preprocess
from scae.errors import InputError
from scae.models import modules as models
from scae.models import stack as stack_lib
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Use from Python", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def readme_example() -> str:
    """The section's example that pretrains (the first one loads the published stack)."""
    return next(code for code in readme_examples() if "scae.pretrain(" in code)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "(10000, 4, 4, 8)" in out
    errors = namespace["result"].records
    assert len(errors) == 2 and all(0 <= r["test_error"] <= 100 for r in errors)
    assert namespace["logits"].shape == (5, 10)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(namespace["stack"]),
                 models.params_of(namespace["same"]))
    assert (tmp_path / "runs" / "api" / "pretrain" / "ckpt" / "layer3").is_dir()


def _stack(channels: int = 1, seed: int = 0) -> scae.Stack:
    config = configs.mnist.get_config("smoke")
    return scae.Stack(stack_lib.layer_specs(config, channels), config.model.pool_sizes,
                      rngs=nnx.Rngs(seed))


def test_save_then_load_is_bit_exact_and_replaces_a_saved_stack(tmp_path):
    a, b = _stack(seed=1), _stack(seed=2)
    a.normalizer = preprocess.Normalizer("symmetric")
    a.save(tmp_path / "s")
    b.save(tmp_path / "s")  # over an existing one: the folder is replaced whole
    b.save(tmp_path / "s")
    loaded = scae.load_stack(tmp_path / "s")
    jax.tree.map(np.testing.assert_array_equal, models.params_of(b), models.params_of(loaded))
    assert loaded.specs == b.specs and loaded.pools == b.pools
    a.save(tmp_path / "t")
    assert scae.load_stack(tmp_path / "t").normalizer.scale == "symmetric"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "t"]  # no leftovers
    with pytest.raises(InputError, match="not a saved stack"):
        scae.load_stack(tmp_path)


@pytest.mark.parametrize("pooled", [True, False])
def test_encode_shapes_at_each_depth_in_bounded_batches(pooled):
    s = _stack()
    x = np.random.default_rng(0).random((23, 28, 28, 1), np.float32)
    expected = {True: [(28, 28, 1), (12, 12, 8), (4, 4, 8), (2, 2, 8)],
                False: [(28, 28, 1), (24, 24, 8), (8, 8, 8), (2, 2, 8)]}[pooled]
    for depth in range(4):
        out = s.encode(x, depth, pooled, batch_size=5)
        assert out.shape == (23,) + expected[depth]
        whole = np.asarray(s.features(jax.numpy.asarray(x), depth, pooled))
        np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="depth 4"):
        s.encode(x, 4)
    with pytest.raises(InputError, match="1 channel"):
        s.encode(np.zeros((2, 28, 28, 3), np.float32))
    assert s.reconstruct(x, 3, batch_size=7).shape == x.shape


def test_api_transfer_equals_the_pipelines_transfer(tmp_path):
    config = configs.mnist.get_config("smoke")
    x = scae.prepare(scae.load_data("mnist", "train").images[:64])
    trained = pretraining.pretrain(config, jax.numpy.asarray(x), jax.numpy.asarray(x[:16]),
                                 tmp_path, log=lambda _: None)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    spec = models.CNNSpec.from_config(config.model, (28, 28, 1))
    key = finetuning.seed_keys(config.seed, 3)[0]
    pipeline = finetuning.initial_model(spec, trained, "pretrained", key, log=lambda _: None)
    logs = []
    api = scae.load_stack(tmp_path).to_cnn(spec, rngs=nnx.Rngs(key), log=logs.append)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(pipeline),
                 models.params_of(api))
    assert "layer3.w->conv3.w" in logs[0] and "fc.w" in logs[0]


def test_frozen_arm_leaves_the_stack_filters_unchanged_and_trains_the_head():
    data = scae.load_data("mnist", "train")
    x, y = data.images[:300], data.labels[:300]
    s = _stack()
    s.normalizer = preprocess.Normalizer("unit")
    result = scae.finetune(x[:200], y[:200], x[200:], y[200:], stack=s, arm="frozen",
                           preset="smoke", log=lambda _: None)
    net = result.model
    for k, layer in enumerate(s.layers, start=1):
        np.testing.assert_array_equal(getattr(net, f"conv{k}").w[...], layer.w[...])
        np.testing.assert_array_equal(getattr(net, f"conv{k}").b[...], layer.b[...])
    fresh = s.to_cnn(net.spec, rngs=nnx.Rngs(finetuning.seed_keys(0, 0)[0]), log=lambda _: None)
    assert not np.allclose(net.fc.w[...], fresh.fc.w[...])
    assert result.records[0]["test_error"] is None  # no test data given
    with pytest.raises(InputError, match="needs a stack"):
        scae.finetune(x[:20], y[:20], x[20:40], y[20:40], arm="pretrained", preset="smoke")
    with pytest.raises(InputError, match="labels must lie in 0..9"):
        scae.finetune(x[:20], y[:20] + 10, x[20:40], y[20:40], arm="random", preset="smoke")


def test_keyword_overrides_name_config_keys():
    c = scae.make_config("mnist", "quick", pretrain__epochs=(2, 1, 1))
    assert c.pretrain.epochs == (2, 1, 1)
    with pytest.raises(InputError, match="no such config key"):
        scae.make_config("mnist", "quick", pretrain__epochz=3)
    with pytest.raises(InputError, match="expected"):
        scae.make_config("mnist", "quick", finetune__learning_rate=-1.0)


def test_encode_command_writes_features_and_refuses_bad_input(tmp_path):
    from absl import flags

    from pipelines import common, encode

    config = configs.mnist.get_config("smoke")
    x = scae.prepare(scae.load_data("mnist", "train").images[:64])
    pretraining.pretrain(config, jax.numpy.asarray(x), jax.numpy.asarray(x[:16]), tmp_path / "w",
                       log=lambda _: None)
    (tmp_path / "w" / "config.json").write_text(json.dumps(json.loads(config.to_json())))
    out = tmp_path / "f.npz"

    def run(*args):  # what ``python -m pipelines.encode ARGS`` runs, in this process
        flags.FLAGS.unparse_flags()
        argv = ["pipelines/encode.py", f"--workdir={tmp_path / 'w'}", *args]
        with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_:
            common.run(encode.main, needs_config=False)
        return exit_.value.code

    assert run(f"--output={out}", "--depth=2", "--split=test") in (0, None)
    with np.load(out) as f:  # the smoke preset keeps 200 test images
        assert f["features"].shape == (200, 4, 4, 8) and f["labels"].shape == (200,)
        assert int(f["depth"]) == 2 and bool(f["pooled"])
    assert run(f"--output={out}", "--depth=3", "--nopooled", "--split=validation") in (0, None)
    with np.load(out) as f:
        assert f["features"].shape == (200, 2, 2, 8)
    assert run(f"--output={out}", "--depth=4") == 2
    # A source whose images the stack cannot take (3 channels for a 1-channel stack).
    from conftest import write_npz

    rgb = write_npz(tmp_path / "rgb.npz", num_train=300, num_test=20, shape=(28, 28, 3))
    assert run(f"--output={out}", f"--source=npz:{rgb}", "--split=test") == 2
    os.remove(tmp_path / "w" / "config.json")
    assert run(f"--output={out}") == 2


def _config_file(name: str):
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_make_config_is_the_config_file(dataset, preset):
    from pipelines import usage

    want = dict(usage.flat_items(_config_file(dataset).get_config(preset)))
    got = dict(usage.flat_items(scae.make_config(dataset, preset)))
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key] == value, f"{key}: make_config {got[key]!r}, config file {value!r}"
    with pytest.raises(InputError, match="dataset 'svhn'"):
        scae.make_config("svhn", preset)


def test_a_workdir_is_reused_only_for_the_same_settings_and_images(tmp_path):
    """The API keeps the commands' workdir rules: the same call resumes, while another
    learning rate or other images at the same workdir are refused in one line instead of the
    old stack coming back."""
    x = scae.load_data("mnist", "train").images[:96]
    w = tmp_path / "w"
    quiet = lambda _: None
    first = scae.pretrain(x, preset="smoke", workdir=w, log=quiet)
    again = scae.pretrain(x, preset="smoke", workdir=w, log=quiet)
    for a, b in zip(jax.tree.leaves(models.params_of(first)),
                    jax.tree.leaves(models.params_of(again))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="learning_rate") as e:
        scae.pretrain(x, preset="smoke", workdir=w, log=quiet, pretrain__learning_rate=0.5)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="the images") as e:
        scae.pretrain(255 - x, preset="smoke", workdir=w, log=quiet)
    assert "\n" not in str(e.value)


def test_a_finetune_workdir_resumes_only_the_same_cell(tmp_path):
    """scae.finetune(..., workdir=W) resumes a cell made by the same call, and refuses one
    made with another rate, other images, another stack or other seeds (naming which), instead
    of returning the old runs as the new call's."""
    data = scae.load_data("mnist", "train")
    x, y = data.images[:240], data.labels[:240]
    quiet = lambda _: None
    w = tmp_path / "w"
    call = dict(arm="random", preset="smoke", workdir=w, log=quiet, finetune__epochs=1)
    first = scae.finetune(x[:160], y[:160], x[160:], y[160:], **call)
    again = scae.finetune(x[:160], y[:160], x[160:], y[160:], **call)
    assert [r["val_error"] for r in again.records] == [r["val_error"] for r in first.records]
    refused = {
        "finetune.learning_rate": dict(finetune__learning_rate=0.1),
        "seeds": dict(seeds=(5,)),
    }
    for what, change in refused.items():
        with pytest.raises(InputError, match=re.escape(what)) as e:
            scae.finetune(x[:160], y[:160], x[160:], y[160:], **{**call, **change})
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="data"):
        scae.finetune(255 - x[:160], y[:160], x[160:], y[160:], **call)
    s = _stack()
    s.normalizer = preprocess.Normalizer("unit")
    with pytest.raises(InputError, match="stack"):
        scae.finetune(x[:160], y[:160], x[160:], y[160:], stack=s, **call)
    # Another arm is another cell of the same workdir.
    scae.finetune(x[:160], y[:160], x[160:], y[160:], **{**call, "arm": "frozen"}, stack=s)


def test_a_workdir_stack_loads_with_the_transform_it_was_trained_behind(tmp_path):
    """load_stack(W) of an API workdir gives the stack with the transform fitted on the
    images it was trained on (not one fitted again on the config's data source): the same
    features as the stack pretrain returned."""
    x = scae.load_data("mnist", "train").images
    ones = x[:2000][scae.load_data("mnist", "train").labels[:2000] == 1][:120]
    w = tmp_path / "w"
    trained = scae.pretrain(ones, preset="smoke", workdir=w, log=lambda _: None,
                            data__standardize=True)
    loaded = scae.load_stack(w)
    np.testing.assert_array_equal(loaded.normalizer.mean, trained.normalizer.mean)
    np.testing.assert_array_equal(loaded.encode(x[:50]), trained.encode(x[:50]))


def test_api_inputs_too_small_or_empty_are_one_line():
    data = scae.load_data("mnist", "train")
    x, y = data.images[:120], data.labels[:120]
    quiet = lambda _: None
    calls = {
        "at least 2": lambda: scae.pretrain(x[:1], preset="smoke", log=quiet),
        "val_images: no images": lambda: scae.pretrain(x, preset="smoke", log=quiet,
                                                       val_images=x[:0]),
        r"val_images: images of \(32, 32, 1\)": lambda: scae.pretrain(
            x, preset="smoke", log=quiet, val_images=np.zeros((5, 32, 32, 1), np.uint8)),
        "val_images: no images; fine-tuning": lambda: scae.finetune(
            x[:80], y[:80], x[:0], y[:0], arm="random", preset="smoke", log=quiet),
        r"label_size 0: expected an integer in 1..80": lambda: scae.finetune(
            x[:80], y[:80], x[80:], y[80:], arm="random", preset="smoke", log=quiet,
            label_size=0),
        "seeds": lambda: scae.finetune(x[:80], y[:80], x[80:], y[80:], arm="random",
                                       preset="smoke", log=quiet, seeds=()),
        r"seeds \(-1,\)": lambda: scae.finetune(x[:80], y[:80], x[80:], y[80:], arm="random",
                                                preset="smoke", log=quiet, seeds=(-1,)),
        r"seeds \(1099511627776,\)": lambda: scae.finetune(
            x[:80], y[:80], x[80:], y[80:], arm="random", preset="smoke", log=quiet,
            seeds=(2**40,)),
    }
    for message, call in calls.items():
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value), message


def test_two_threads_cannot_share_a_workdir(tmp_path):
    """The lock is the process's file, so it also tells the threads of one process apart:
    a second API call on a workdir that another thread is using is refused."""
    import threading

    from scae import workdir as workdir_lib

    w = tmp_path / "w"
    taken, done = threading.Event(), threading.Event()

    def hold():
        workdir_lib.lock(w, flag="workdir")
        taken.set()
        done.wait()
        workdir_lib.release(w)

    t = threading.Thread(target=hold)
    t.start()
    try:
        taken.wait()
        with pytest.raises(InputError, match="in use by another thread"):
            scae.pretrain(scae.load_data("mnist", "train").images[:64], preset="smoke",
                          workdir=w, log=lambda _: None)
    finally:
        done.set()
        t.join()
    workdir_lib.lock(w)  # free again once the other thread let go
    workdir_lib.release(w)
