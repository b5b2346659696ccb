"""Building an experiment's inputs from a config's data section, and pixel normalisation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from scae import config
from scae.data import inputs
from scae.data.preprocess import Normalizer, fit_normalizer, to_uint8
from scae.errors import InputError


def data_config(source: str, **fields):
    c = config.base_config("mnist").data
    c.source = source
    c.validation_size = 20
    for key, value in fields.items():
        c[key] = value
    return c


def image_ids(images) -> np.ndarray:
    """The index that write_npz encoded in each image's first two pixels."""
    flat = np.asarray(images).reshape(len(images), -1)
    return flat[:, 0].astype(int) + 256 * flat[:, 1].astype(int)


def test_build_carves_validation_from_the_tail(tiny_npz):
    got = inputs.build(data_config(f"npz:{tiny_npz}"), seed=0)
    assert got.image_shape == (4, 4, 1) and got.class_names == tuple("0123456789")
    for images in (got.pretrain, got.train_images, got.val_images, got.test_images):
        assert isinstance(images, jax.Array) and images.dtype == np.float32
    assert got.train_images.shape == (40, 4, 4, 1) and got.val_images.shape == (20, 4, 4, 1)
    assert got.test_images.shape == (20, 4, 4, 1)
    assert got.train_labels.dtype == np.int32 and isinstance(got.val_labels, np.ndarray)
    ids = lambda x: image_ids(to_uint8(x, got.normalizer))  # noqa: E731
    np.testing.assert_array_equal(ids(got.train_images), np.arange(40))
    np.testing.assert_array_equal(ids(got.val_images), np.arange(40, 60))
    np.testing.assert_array_equal(got.val_labels, np.arange(40, 60) % 10)
    assert got.pretrain is got.train_images  # pretrain_size 0: every non-validation image


def test_labelled_subsets_avoid_validation_and_nest(tmp_path, make_npz):
    path = make_npz(tmp_path / "d.npz", num_train=400)
    got = inputs.build(data_config(f"npz:{path}", validation_size=100), seed=0)
    normalizer = got.normalizer
    val_ids = set(image_ids(to_uint8(got.val_images, normalizer)))
    small, large = inputs.labelled(got, 50, seed=2), inputs.labelled(got, 200, seed=2)
    train_ids = image_ids(to_uint8(got.train_images, normalizer))
    assert not val_ids & set(train_ids[large])
    assert np.isin(small, large).all()
    assert list(np.bincount(got.train_labels[small])) == [5] * 10
    with pytest.raises(InputError, match="config.compare.label_sizes"):
        inputs.labelled(got, 301, seed=0)


def test_pretrain_subset_and_test_cut(tiny_npz):
    got = inputs.build(data_config(f"npz:{tiny_npz}", pretrain_size=15, test_size=7), seed=1)
    pretrain_ids = image_ids(to_uint8(got.pretrain, got.normalizer))
    assert len(set(pretrain_ids)) == 15 and pretrain_ids.max() < 40
    test_ids = image_ids(to_uint8(got.test_images, got.normalizer))
    np.testing.assert_array_equal(test_ids, np.arange(7))
    np.testing.assert_array_equal(got.test_labels, np.arange(7) % 10)
    other = inputs.build(data_config(f"npz:{tiny_npz}", pretrain_size=15), seed=2)
    assert set(image_ids(to_uint8(other.pretrain, other.normalizer))) != set(pretrain_ids)
    with pytest.raises(InputError, match="config.data.pretrain_size"):
        inputs.build(data_config(f"npz:{tiny_npz}", pretrain_size=41), seed=0)


def test_standardisation_uses_training_images_only(tmp_path, make_npz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, (60, 4, 4, 3), np.uint8)
    train[40:] = 255  # the validation tail must not move the statistics
    path = make_npz(tmp_path / "s.npz", train_images=train,
                    test_images=rng.integers(0, 256, (20, 4, 4, 3), np.uint8))
    got = inputs.build(data_config(f"npz:{path}", standardize=True, scale="symmetric"), seed=0)
    pool = np.asarray(got.train_images).reshape(-1, 3)
    np.testing.assert_allclose(pool.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(pool.std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(to_uint8(got.train_images, got.normalizer), train[:40])


def test_train_and_test_must_agree(tmp_path, make_npz, tiny_npz):
    path = make_npz(tmp_path / "m.npz", test_images=np.zeros((20, 5, 4), np.uint8))
    with pytest.raises(InputError, match="same"):
        inputs.build(data_config(f"npz:{path}"), seed=0)
    with pytest.raises(InputError, match="config.data.validation_size"):
        inputs.build(data_config(f"npz:{tiny_npz}", validation_size=60), seed=0)


@pytest.mark.parametrize("scale, low, high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_normalizer_scales(scale, low, high):
    images = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1, 1)
    normalizer = fit_normalizer(images, scale, standardize=False)
    x = normalizer(images)
    assert x.dtype == np.float32 and x.min() == low and x.max() == high
    np.testing.assert_array_equal(to_uint8(x, normalizer), images)


def test_normalizer_constant_channel_and_clipping():
    images = np.zeros((2, 2, 2, 1), np.uint8)
    normalizer = fit_normalizer(images, "unit", standardize=True)
    assert np.all(np.isfinite(normalizer(images))) and normalizer.std[0] == 1.0
    assert to_uint8(np.array([-5.0, 5.0]), Normalizer("unit")).tolist() == [0, 255]
    with pytest.raises(InputError, match="config.data.scale"):
        Normalizer("percent")


# --- what the model can take, checked before any work --------------------------------------


def smoke():
    c = config.base_config("mnist")
    config.apply_preset(c, "smoke")  # kernels 5, 5, 3; pools 2, 2, 1
    return c


def test_model_fits_the_image_size_exactly_or_refuses():
    c = smoke()
    # 21: conv 5 -> 17, pool 2 -> 9, conv 5 -> 5, pool 2 -> 3, conv 3 -> 1. 20 ends at 2x2.
    config.check_model_fits(c, (21, 21, 1))
    with pytest.raises(InputError, match=r"layer 3's kernel of 3x3 does not fit its 2x3 input"):
        config.check_model_fits(c, (20, 21, 1))
    c.pretrain.layers = 2
    config.check_model_fits(c, (20, 20, 1), command="pretrain")  # only the pretrained layers
    with pytest.raises(InputError, match="layer 1's kernel of 5x5 does not fit its 4x28"):
        config.check_model_fits(c, (4, 28, 1), command="pretrain")


@pytest.mark.parametrize("channels,ok", [(1, True), (2, False), (3, True), (4, False)])
def test_channel_counts_the_figures_can_draw(channels, ok):
    if ok:
        config.check_model_fits(smoke(), (28, 28, channels))
    else:
        with pytest.raises(InputError, match=f"{channels} channels; supported are 1"):
            config.check_model_fits(smoke(), (28, 28, channels))


def test_more_classes_than_the_model_outputs(make_npz, tmp_path):
    c = smoke()
    path = make_npz(tmp_path / "c.npz", num_train=300, shape=(28, 28), num_classes=12)
    c.data.source, c.data.validation_size, c.data.pretrain_size = f"npz:{path}", 50, 0
    data = inputs.build(c.data, c.seed)
    with pytest.raises(InputError, match=r"the data set has 12 classes, the model outputs 10"):
        inputs.check_for(c, data, "compare")
    c.model.num_classes = 12
    inputs.check_for(c, data, "compare")


def test_channels_first_images_are_named_as_such():
    """(N, C, H, W) arrays (PyTorch's layout) are refused with a line that says so."""
    with pytest.raises(InputError, match=r"channels-first \(1 channels of 28x28\): expected "
                                         r"\(N, H, W, C\)"):
        config.check_model_fits(smoke(), (1, 28, 28))
    with pytest.raises(InputError, match="supported are 1") as e:
        config.check_model_fits(smoke(), (28, 28, 4))
    assert "channels-first" not in str(e.value)
