"""Data augmentation on the device, inside the jitted training step: random translations with
zero padding and random horizontal flips (Cireşan et al. 2011 trained a CNN of the paper's size
on CIFAR-10 with translations).

The arms of one seed must see identical augmented batches, so that their difference measures
the initialisation only: the key is the seed's per-step key (:mod:`scae.study.finetune`),
never anything that depends on the arm.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("translate", "flip"))
def augment(images: jax.Array, key: jax.Array, translate: int, flip: bool) -> jax.Array:
    """Randomly shifted and flipped copies of ``images`` (N, H, W, C).

    Each image moves by a uniform integer offset in [-translate, translate] along each axis,
    independently, with zeros shifted in at the borders; with ``flip``, each image is mirrored
    left-right with probability 1/2. ``translate=0, flip=False`` returns ``images`` unchanged.
    Pure and jittable (``translate`` and ``flip`` are static); vmap over a leading seed axis of
    ``images`` and ``key`` for several seeds.
    """
    if translate < 0:
        raise ValueError(f"augment: translate must be >= 0, got {translate}")
    if translate == 0 and not flip:
        return images
    n, h, w, _ = images.shape
    k_shift, k_flip = jax.random.split(key)
    out = images
    if translate:
        t = translate
        shifts = jax.random.randint(k_shift, (n, 2), -t, t + 1)
        padded = jnp.pad(images, ((0, 0), (t, t), (t, t), (0, 0)))

        def crop(x, d):
            # Output pixel (i, j) is input pixel (i - dy, j - dx): content moves by (dy, dx).
            return jax.lax.dynamic_slice(x, (t - d[0], t - d[1], 0), (h, w, x.shape[-1]))

        out = jax.vmap(crop)(padded, shifts)
    if flip:
        mirror = jax.random.bernoulli(k_flip, 0.5, (n,))
        out = jnp.where(mirror[:, None, None, None], out[:, :, ::-1, :], out)
    return out
