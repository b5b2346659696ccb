"""On-device augmentation: shapes, identity when off, keys shared by the arms, real shifts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scae.data import augment as aug

KEY = jax.random.PRNGKey(3)


def images(n=32, h=9, w=9, c=2):
    return jax.random.normal(jax.random.PRNGKey(0), (n, h, w, c))


@pytest.mark.parametrize("translate,flip", [(0, True), (2, False), (3, True)])
def test_shapes_and_dtype(translate, flip):
    x = images()
    y = aug.augment(x, KEY, translate, flip)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_off_is_the_identity():
    x = images()
    np.testing.assert_array_equal(aug.augment(x, KEY, 0, False), x)


def test_same_key_same_batch_other_key_other_batch():
    x = images()
    step_key = lambda seed, step: jax.random.fold_in(jax.random.PRNGKey(seed), step)
    a = aug.augment(x, step_key(7, 11), 2, True)
    b = aug.augment(x, step_key(7, 11), 2, True)  # e.g. another arm
    np.testing.assert_array_equal(a, b)
    for other in (step_key(7, 12), step_key(8, 11)):
        assert not np.array_equal(aug.augment(x, other, 2, True), a)


def test_translation_moves_the_content_within_the_bound():
    n, t = 200, 2
    x = jnp.zeros((n, 9, 9, 1)).at[:, 4, 4, 0].set(1.0)  # one bright pixel in the centre
    y = np.asarray(aug.augment(x, KEY, t, False))
    assert np.all(y.sum((1, 2, 3)) == 1.0)  # the pixel is moved, not lost (it stays inside)
    rows, cols = np.nonzero(y[..., 0])[1:]
    dy, dx = rows - 4, cols - 4
    assert np.abs(dy).max() <= t and np.abs(dx).max() <= t
    assert set(dy) == set(dx) == set(range(-t, t + 1))  # every offset occurs, on both axes
    # Zeros come in at the border: a shifted all-ones image loses rows/columns to zeros.
    ones = aug.augment(jnp.ones((n, 9, 9, 1)), KEY, t, False)
    lost = 81 - np.asarray(ones).sum((1, 2, 3))
    np.testing.assert_array_equal(lost, 81 - (9 - np.abs(dy)) * (9 - np.abs(dx)))


def test_flips_mirror_about_half_the_images():
    x = images(200)
    y = np.asarray(aug.augment(x, KEY, 0, True))
    flipped = np.all(y == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(y == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped | kept)
    assert 60 < flipped.sum() < 140


def test_vmapped_over_seeds_equals_one_seed_at_a_time():
    xs = jnp.stack([images(8), images(8) + 1.0])
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), 5) for s in (0, 1)])
    batched = jax.vmap(lambda x, k: aug.augment(x, k, 2, True))(xs, keys)
    for i in range(2):
        np.testing.assert_array_equal(batched[i], aug.augment(xs[i], keys[i], 2, True))


def test_negative_translate_is_refused():
    with pytest.raises(ValueError, match="translate"):
        aug.augment(images(), KEY, -1, False)
