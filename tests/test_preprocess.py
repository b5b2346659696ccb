"""Global contrast normalisation and ZCA whitening: fitted on training images only, inverted
for figures."""

from __future__ import annotations

import numpy as np
import pytest

from scae import config as cfglib
from scae.data.preprocess import GCN_MIN_STD, Normalizer, fit_normalizer, gcn, to_uint8
from scae.errors import InputError


def correlated_images(n: int, seed: int = 0, shape=(4, 4, 2)) -> np.ndarray:
    """uint8 images whose pixels are strongly correlated (a smooth random field + noise)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    mix = rng.normal(size=(3, d))
    x = 128 + 30 * rng.normal(size=(n, 3)) @ mix + 6 * rng.normal(size=(n, d))
    return np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(n, *shape)


@pytest.mark.parametrize("scale", ["unit", "symmetric"])
def test_gcn_gives_each_image_zero_mean_and_unit_std(scale):
    images = correlated_images(50)
    images[3] = 77  # a constant image stays finite: zero, not noise blown up
    norm = fit_normalizer(images, scale, standardize=False, preprocess="gcn")
    x = norm(images)
    flat = x.reshape(len(x), -1).astype(np.float64)
    keep = np.arange(len(x)) != 3
    np.testing.assert_allclose(flat[keep].mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(flat[keep].std(1), 1, atol=1e-4)
    assert np.all(flat[3] == 0)
    # GCN removes any affine map of the pixels: the scale setting no longer matters.
    other = fit_normalizer(images, "unit" if scale == "symmetric" else "symmetric", False, "gcn")
    np.testing.assert_allclose(other(images), x, atol=1e-5)
    assert gcn(np.zeros((1, 2, 2, 1))).tolist() == [[[[0.0], [0.0]], [[0.0], [0.0]]]]
    assert GCN_MIN_STD > 0


def test_zca_whitens_the_training_images_and_is_fitted_on_them_only():
    train, test = correlated_images(3000, 0), correlated_images(500, 1)
    eps = 1e-3
    norm = fit_normalizer(train, "unit", False, "gcn_zca", zca_epsilon=eps)
    x = norm(train).reshape(len(train), -1).astype(np.float64)
    g = gcn(Normalizer("unit")(train)).reshape(len(train), -1).astype(np.float64)
    cov_g = np.cov(g.T)
    s, u = np.linalg.eigh(cov_g)
    s = np.maximum(s, 0)
    # Whitened covariance is U diag(s / (s + eps)) U^T: the identity on every component much
    # larger than eps (GCN removes one dimension, the per-image mean, which stays at zero).
    np.testing.assert_allclose(np.cov(x.T), (u * (s / (s + eps))) @ u.T, atol=2e-3)
    # Before: three strong components carry almost all the variance; after: every direction
    # but the one GCN removed has about unit variance.
    assert s[-3:].sum() > 0.9 * s.sum()
    ev = np.linalg.eigvalsh(np.cov(x.T))
    assert ev[0] < 1e-6 and np.all((ev[1:] > 0.95) & (ev[1:] < 1.0 + 1e-6))
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    # The matrix depends on the training images only: the test images change nothing.
    again = fit_normalizer(train, "unit", False, "gcn_zca", zca_epsilon=eps)
    np.testing.assert_array_equal(again.zca, norm.zca)
    other = fit_normalizer(test, "unit", False, "gcn_zca", zca_epsilon=eps)
    assert not np.allclose(other.zca, norm.zca, atol=1e-3)
    # Applied to other images, it is the same linear map (no refitting on them).
    gt = gcn(Normalizer("unit")(test)).reshape(len(test), -1)
    np.testing.assert_allclose(norm(test).reshape(len(test), -1),
                               (gt - norm.zca_mean) @ norm.zca, rtol=1e-4, atol=1e-4)


def test_chunked_application_equals_one_pass():
    images = correlated_images(9000, 2, shape=(2, 2, 1))
    norm = fit_normalizer(images, "unit", False, "gcn_zca")
    one = norm._apply(images)
    np.testing.assert_allclose(norm(images), one, rtol=1e-6, atol=1e-6)


def test_inverse_for_figures():
    images = correlated_images(200)
    for mode in ("gcn", "gcn_zca"):
        norm = fit_normalizer(images, "unit", False, mode)
        back = to_uint8(norm(images), norm).reshape(len(images), -1).astype(float)
        orig = images.reshape(len(images), -1).astype(float)
        # GCN keeps each image up to its own brightness and contrast: the drawn image is the
        # original under a per-image affine map (correlation 1, but for rounding).
        corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(back, orig)]
        assert min(corr) > 0.995, mode
        # ... with the training set's typical brightness and contrast.
        assert abs(back.mean() - orig.mean()) < 2
        assert abs(back.std(1).mean() - orig.std(1).mean()) < 2
    norm = fit_normalizer(images, "unit", False, "gcn_zca")
    g = gcn(Normalizer("unit")(images))
    w = norm(images)
    undone = ((w.reshape(len(w), -1) @ norm.zca_inverse) + norm.zca_mean).reshape(w.shape)
    np.testing.assert_allclose(undone, g, atol=1e-3)  # the stored inverse undoes the whitening


def test_bad_preprocess_values():
    images = correlated_images(10)
    with pytest.raises(InputError, match="config.data.preprocess"):
        fit_normalizer(images, "unit", False, "zca")
    with pytest.raises(InputError, match="config.data.zca_epsilon"):
        fit_normalizer(images, "unit", False, "gcn_zca", zca_epsilon=0.0)
    with pytest.raises(InputError, match="at least 2"):
        fit_normalizer(images[:1], "unit", False, "gcn_zca")


@pytest.mark.parametrize("key,value,match", [
    ("data.preprocess", "zca", "config.data.preprocess"),
    ("data.zca_epsilon", -1.0, "config.data.zca_epsilon"),
    ("data.standardize", True, "not both"),
    ("model.dropout", 1.0, "config.model.dropout"),
    ("model.dropout", -0.1, "config.model.dropout"),
    ("finetune.augment_translate", -2, "config.finetune.augment_translate"),
])
def test_config_validation_of_the_recipe_keys(key, value, match):
    c = cfglib.base_config("cifar10")
    cfglib.validate(c)
    assert (c.data.preprocess, c.model.dropout, c.finetune.augment_translate,
            c.finetune.augment_flip, c.finetune.refit_full) == ("none", 0.0, 0, False, False)
    if key == "data.standardize":
        c.data.preprocess = "gcn"
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(InputError, match=match):
        cfglib.validate(c)
