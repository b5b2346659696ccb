"""A stack carries its input transform: the API's features are the encode command's, a saved
stack keeps its transform bit for bit, raw images go in and what cannot be raw pixels is
refused; fine-tuning takes its conv layers from the stack and answers mistakes in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from absl import flags
from flax import nnx

import scae
from scae.data import inputs, preprocess
from scae.errors import InputError
from scae.models import stack as stack_lib
from scae.study import pretrain as pretraining

QUIET = lambda _: None  # noqa: E731


def _workdir(tmp_path: Path, config) -> Path:
    """A pretrain workdir as the commands leave it: the stack trained on inputs.build's
    inputs, and config.json."""
    data = inputs.build(config.data, config.seed)
    work = tmp_path / "w"
    pretraining.pretrain(config, data.pretrain, data.val_images, work, log=QUIET)
    (work / "config.json").write_text(config.to_json())
    return work


def _encode_command(work: Path, out: Path, depth: int) -> np.ndarray:
    """What ``python -m pipelines.encode`` writes for the test split, run in this process."""
    from pipelines import common, encode

    flags.FLAGS.unparse_flags()
    argv = ["pipelines/encode.py", f"--workdir={work}", f"--output={out}", f"--depth={depth}",
            "--split=test"]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_:
        common.run(encode.main, needs_config=False)
    assert exit_.value.code in (0, None)
    with np.load(out) as f:
        return f["features"]


def test_api_features_equal_the_encode_command_for_symmetric_mnist(tmp_path):
    config = scae.make_config("mnist", "smoke", data__scale="symmetric", pretrain__layers=2)
    work = _workdir(tmp_path, config)
    want = _encode_command(work, tmp_path / "f.npz", depth=2)
    test = scae.load_data("mnist", "test").images[:config.data.test_size]
    stack = scae.load_stack(work)
    assert stack.normalizer.scale == "symmetric"
    np.testing.assert_allclose(stack.encode(test, depth=2), want, rtol=1e-5, atol=1e-5)
    # Floats in [0, 1] are the same pixels.
    np.testing.assert_allclose(stack.encode(test / 255.0, depth=2), want, rtol=1e-4, atol=1e-4)


def test_api_features_equal_the_encode_command_for_gcn_zca_colour_images(tmp_path):
    from conftest import write_npz

    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "rgb.npz", num_train=500, num_test=40, shape=(16, 16, 3),
                     train_images=rng.integers(0, 256, (500, 16, 16, 3), np.uint8),
                     test_images=rng.integers(0, 256, (40, 16, 16, 3), np.uint8))
    config = scae.make_config("cifar10", "smoke", data__source=f"npz:{path}",
                              data__standardize=False, data__preprocess="gcn_zca",
                              model__kernel_sizes=(3, 3, 3), pretrain__layers=2)
    work = _workdir(tmp_path, config)
    want = _encode_command(work, tmp_path / "f.npz", depth=2)
    stack = scae.load_stack(work)
    assert stack.normalizer.preprocess == "gcn_zca"
    test = scae.load_data(f"npz:{path}", "test").images
    np.testing.assert_allclose(stack.encode(test, depth=2), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="ZCA whitening was fitted on images of 768 values"):
        stack.encode(np.zeros((2, 18, 18, 3), np.uint8))


def _stack(seed: int = 0, channels: int = 1) -> scae.Stack:
    config = scae.make_config("mnist", "smoke")
    return scae.Stack(stack_lib.layer_specs(config, channels), config.model.pool_sizes,
                      rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("how", [dict(standardize=True), dict(preprocess="gcn_zca"),
                                 dict(preprocess="gcn")])
def test_save_and_load_keep_the_transform_bit_exact(tmp_path, how):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 28, 28, 1), np.uint8)
    s = _stack()
    s.normalizer = preprocess.fit_normalizer(images, "symmetric", how.get("standardize", False),
                                             how.get("preprocess", "none"))
    s.save(tmp_path / "s")
    loaded = scae.load_stack(tmp_path / "s")
    for field in ("scale", "preprocess", "gcn_mean", "gcn_std"):
        assert getattr(loaded.normalizer, field) == getattr(s.normalizer, field)
    for field in ("mean", "std", "zca_mean", "zca", "zca_inverse"):
        a, b = getattr(s.normalizer, field), getattr(loaded.normalizer, field)
        assert (a is None) == (b is None)
        if a is not None:
            assert b.dtype == a.dtype
            np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(loaded.encode(images[:8]), s.encode(images[:8]))
    if how.get("preprocess") == "gcn_zca":  # half the whitening matrix is on disk, no inverse
        with np.load(tmp_path / "s" / "transform.npz") as f:
            d = s.normalizer.zca.shape[0]
            assert "zca" not in f.files and "zca_inverse" not in f.files
            assert f["zca_upper"].size == d * (d + 1) // 2


def test_the_packed_symmetric_matrix_comes_back_bit_for_bit():
    """ZCA's matrix is symmetric only up to rounding: the entries below the diagonal that
    differ from their mirror are kept, so any square matrix comes back exactly."""
    rng = np.random.default_rng(0)
    sym = rng.normal(size=(7, 7)).astype(np.float32)
    sym = sym + sym.T
    nearly = sym.copy()
    nearly[5, 2] = np.nextafter(nearly[5, 2], np.float32(np.inf))  # one ulp below the diagonal
    for m in (sym, nearly, rng.normal(size=(4, 4)).astype(np.float32),
              np.ones((1, 1), np.float32), np.zeros((0, 0), np.float32)):
        packed = preprocess.pack_symmetric(m, "w")
        back = preprocess.unpack_symmetric(packed, "w")
        assert back.dtype == m.dtype and back.view(np.uint32).tolist() == m.view(
            np.uint32).tolist()
    assert preprocess.pack_symmetric(sym, "w")["w_lower_index"].size == 0
    assert preprocess.pack_symmetric(nearly, "w")["w_lower_index"].tolist() == [5 * 7 + 2]


def test_a_stack_saved_with_the_whole_zca_matrices_still_loads(tmp_path):
    """transform.npz as stacks were saved before the ZCA matrix was packed: ``zca`` and
    ``zca_inverse`` whole."""
    images = np.random.default_rng(2).integers(0, 256, (64, 28, 28, 1), np.uint8)
    s = _stack()
    s.normalizer = preprocess.fit_normalizer(images, "unit", False, "gcn_zca")
    s.save(tmp_path / "s")
    n = s.normalizer
    np.savez(tmp_path / "s" / "transform.npz", zca_mean=n.zca_mean, zca=n.zca,
             zca_inverse=n.zca_inverse + 1)
    loaded = scae.load_stack(tmp_path / "s").normalizer
    np.testing.assert_array_equal(loaded.zca, n.zca)
    np.testing.assert_array_equal(loaded.zca_inverse, n.zca_inverse + 1)  # as saved


def test_a_stack_saved_with_the_old_json_transform_still_loads(tmp_path):
    s = _stack()
    s.normalizer = preprocess.Normalizer("unit", np.array([0.5], np.float32),
                                         np.array([0.25], np.float32))
    s.save(tmp_path / "s")
    meta = tmp_path / "s" / "stack.json"
    info = json.loads(meta.read_text())
    info["normalizer"] = {"scale": "unit", "mean": [0.5], "std": [0.25]}
    meta.write_text(json.dumps(info))
    (tmp_path / "s" / stack_lib.TRANSFORM_FILE).unlink()
    loaded = scae.load_stack(tmp_path / "s").normalizer
    assert loaded.mean.tolist() == [0.5] and loaded.std.tolist() == [0.25]


def test_raw_images_in_and_what_cannot_be_raw_pixels_refused():
    s = _stack()
    s.normalizer = preprocess.Normalizer("symmetric")
    x = np.random.default_rng(2).integers(0, 256, (5, 28, 28, 1), np.uint8)
    feats = s.encode(x, depth=1)
    np.testing.assert_allclose(s.encode(x / 255.0, depth=1), feats, atol=1e-5)
    np.testing.assert_array_equal(s.encode(x.astype(np.int64), depth=1), feats)
    np.testing.assert_array_equal(s.encode(x[..., 0], depth=1), feats)  # (N, H, W) grey
    bad = {"floats in \\[0, 255\\]": x.astype(np.float32),
           "one image, not a batch": x[0],
           "too small for the stack, whose layer 1 kernel of 5x5": x[:, :4, :4],
           "integers in \\[-1, 255\\]": x.astype(np.int16) - (x == 0),
           "expected 1 channel": np.zeros((2, 28, 28, 3), np.uint8),
           "not finite": np.full((2, 28, 28, 1), np.nan, np.float32),
           "expected a batch of images": np.zeros((2, 1, 28, 28, 1), np.uint8)}
    for message, images in bad.items():
        with pytest.raises(InputError, match=message) as e:
            s.encode(images)
        assert "\n" not in str(e.value)
    # Depth 3 takes pooled 4x4 maps into a 3x3 kernel: 16x16 images are too small there.
    with pytest.raises(InputError, match="layer 3 kernel of 3x3 meets a 1x1 input"):
        s.reconstruct(x[:, :16, :16])
    s.normalizer = None  # a stack without a transform takes network inputs only
    with pytest.raises(InputError, match="carries no input transform"):
        s.encode(x)


def test_pretrain_applies_the_config_transform_it_labels_the_stack_with(tmp_path):
    x = scae.load_data("mnist", "train").images[:300]
    stack = scae.pretrain(x, preset="smoke", data__scale="symmetric", pretrain__layers=1,
                          workdir=tmp_path, log=QUIET)
    assert stack.normalizer.scale == "symmetric"
    records = [json.loads(line) for line in
               (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    val = x[-30:]  # the last tenth, held out
    mse = np.mean(np.square(stack.reconstruct(val, 1) - stack.prepare(val)))
    np.testing.assert_allclose(mse, records[-1]["val_mse"], rtol=1e-4)
    with pytest.raises(InputError, match="floats in"):
        scae.pretrain(x.astype(np.float32), preset="smoke", log=QUIET)


def test_finetune_takes_the_conv_layers_from_the_stack_and_loads_a_path(tmp_path):
    data = scae.load_data("mnist", "train")
    x, y = data.images[:300], data.labels[:300]
    s = _stack(seed=3)
    s.normalizer = preprocess.Normalizer("symmetric")
    s.save(tmp_path / "s")
    # The config's conv layers (4 maps) disagree with the stack's (8): the stack's are taken.
    result = scae.finetune(x[:200], y[:200], x[200:], y[200:], stack=str(tmp_path / "s"),
                           arm="frozen", preset="smoke", model__features=(4, 4, 4), log=QUIET)
    for k, layer in enumerate(s.layers, start=1):
        np.testing.assert_array_equal(getattr(result.model, f"conv{k}").w[...], layer.w[...])
    assert result.model.spec.features == (8, 8, 8) and result.model.spec.fc_width == 16


def test_finetune_mistakes_are_one_line_input_errors(tmp_path):
    data = scae.load_data("mnist", "train")
    x, y = data.images[:40], data.labels[:40]
    s = _stack()
    s.normalizer = preprocess.Normalizer("unit")
    run = lambda **kw: scae.finetune(**{**dict(  # noqa: E731
        train_images=x[:20], train_labels=y[:20], val_images=x[20:], val_labels=y[20:],
        stack=s, preset="smoke", log=QUIET), **kw})
    cases = {
        "finetune__lerning_rate: no such config key; did you mean finetune__learning_rate":
            dict(finetune__lerning_rate=0.1),
        "no keyword 'lable_size'; did you mean label_size": dict(lable_size=10),
        "model.num_classes: a classifier needs at least 2 classes": dict(model__num_classes=1),
        "one image, not a batch": dict(train_images=x[0]),
        "layer 2.s kernel of 5x5 does not fit its 2x2 input": dict(train_images=x[:20, :8, :8]),
        "kernel of 5x5 does not fit": dict(train_images=x[:20, :8, :8], stack=None, arm="random"),
        "no such folder": dict(stack=str(tmp_path / "nowhere")),
        "not a saved stack": dict(stack=tmp_path),
        "val_images: images of \\(28, 24, 1\\)": dict(val_images=x[20:, :, :24]),
        "train_labels: expected 20 integer labels": dict(train_labels=y[:20, None]),
    }
    for message, kw in cases.items():
        with pytest.raises(InputError, match=message) as e:
            run(**kw)
        assert "\n" not in str(e.value), message
