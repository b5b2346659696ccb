"""The jitted training core shared by CAE pretraining and CNN fine-tuning.

Data sets live on the device; each epoch is a seeded permutation of example indices, and a
compiled ``lax.scan`` runs many steps per call, gathering its batches from the device arrays,
so Python is off the per-step path. Randomness is ``fold_in(key, step)``: a run resumed from a
checkpoint at step s draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from scae import parallel

Array = jax.Array
# loss_fn(params, batch, key) -> scalar loss, where batch = data[indices] (a pytree).
LossFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps a run takes: whole epochs of ``batch_size``, the remainder dropped."""

    num_examples: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def chunks(self, start_step: int, steps_per_call: int):
        """(epoch, offset within the epoch, number of steps) from ``start_step`` to the end;
        chunks never cross an epoch boundary, so each sees one permutation."""
        step = start_step
        while step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            n = min(steps_per_call, self.steps_per_epoch - within)
            yield epoch, within, n
            step += n


def plan(num_examples: int, batch_size: int, epochs: int, min_steps: int = 0) -> Plan:
    """A plan of at least ``epochs`` epochs and at least ``min_steps`` steps."""
    if num_examples < batch_size:
        batch_size = num_examples  # a tiny labelled set trains full-batch
    spe = num_examples // batch_size
    return Plan(num_examples, batch_size, max(epochs, math.ceil(min_steps / spe)))


def epoch_order(key: Array, pool: Array, epoch: int | Array) -> Array:
    """The indices of ``pool`` in the seeded order of ``epoch``."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), pool)


def make_steps(loss_fn: LossFn, tx: optax.GradientTransformation, batch_size: int,
               num_steps: int, seeds: bool = False) -> Callable:
    """Compiles ``num_steps`` training steps as one call.

    Returns ``run(params, opt_state, data, order, offset, step0, key) -> (params, opt_state,
    losses)``: step i trains on ``data[order[offset + i*batch_size : ... + batch_size]]`` with
    key ``fold_in(key, step0 + i)``. With ``seeds=True`` it is vmapped over a leading seed axis
    of params, opt_state, order and key (the data are shared).
    """

    def run(params, opt_state, data, order, offset, step0, key):
        def step(carry, i):
            params, opt_state = carry
            idx = lax.dynamic_slice_in_dim(order, offset + i * batch_size, batch_size)
            batch = parallel.shard_batch(jax.tree.map(lambda a: a[idx], data))
            step_key = jax.random.fold_in(key, step0 + i)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, step_key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = lax.scan(step, (params, opt_state), jnp.arange(num_steps))
        return params, opt_state, losses

    if seeds:
        run = jax.vmap(run, in_axes=(0, 0, None, 0, None, None, 0))
    return jax.jit(run, donate_argnums=(0, 1))


def batched_apply(fn: Callable[[Array], Array], x: Array, batch_size: int) -> Array:
    """``fn`` over ``x`` in batches (inside jit: a ``lax.map``), bounding memory on big sets."""
    n = x.shape[0]
    pad = -n % batch_size
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x
    out = lax.map(fn, xp.reshape((-1, batch_size) + x.shape[1:]))
    out = jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], out)
    return out


@jax.jit
def all_finite(tree) -> Array:
    """Whether every value of every array in ``tree`` is finite (no NaN, no inf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
