"""Spreading training over every visible device with ``jax.sharding``: the batch, or the seeds.

Two ways, chosen per phase (:func:`spread`):

- ``batch``: a 1-D mesh over a ``data`` axis; each batch is split across devices along its
  first axis and the parameters are replicated, so XLA inserts the gradient all-reduce.
- ``seeds``: the seeds of a phase are independent models, so each device trains its share of
  them (a ``seeds`` mesh axis, :func:`jax.shard_map`) with no collective inside the steps;
  the seeds are padded with copies to a multiple of the devices, and the copies dropped.

With one device every function here is the identity, so the same code runs on a laptop, a GPU
or a TPU slice.
"""

from __future__ import annotations

import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@functools.cache
def mesh() -> Mesh:
    """The mesh over all devices (all hosts' devices after ``jax.distributed.initialize``)."""
    return Mesh(np.array(jax.devices()), ("data",))


@functools.cache
def seed_mesh() -> Mesh:
    """The same devices as :func:`mesh`, along a ``seeds`` axis."""
    return Mesh(np.array(jax.devices()), ("seeds",))


def num_devices() -> int:
    return mesh().size


SPREADS = ("auto", "batch", "seeds")
# Inside a seed-spread program each device holds whole seeds: batches are not split further.
_within_seeds: contextvars.ContextVar[bool] = contextvars.ContextVar("within_seeds",
                                                                     default=False)


def spread(setting: str, seeds: int) -> str:
    """How a phase of ``seeds`` seeds uses the devices: 'seeds' or 'batch' as ``setting`` says,
    'auto' picking 'seeds' when there are several devices and seeds (no communication during
    the steps) and 'batch' otherwise; 'none' on one device."""
    if setting not in SPREADS:
        raise ValueError(f"spread {setting!r} not in {SPREADS}")
    if num_devices() == 1:
        return "none"
    if setting == "auto":
        return "seeds" if seeds > 1 else "batch"
    return setting


def over_devices(fn, in_specs: tuple, seeds: int):
    """``fn`` (arguments and outputs with a leading seed axis where ``in_specs`` says 'seeds',
    outputs all seeded) with the seeds spread over the devices: padded with copies of seed 0 to
    a multiple of the devices, each device running ``fn`` on its own seeds, the copies dropped
    from the outputs. Call it inside jit."""
    k = num_devices()
    padded = -(-seeds // k) * k
    specs = tuple(P("seeds") if s == "seeds" else P() for s in in_specs)
    body = jax.shard_map(fn, mesh=seed_mesh(), in_specs=specs, out_specs=P("seeds"),
                         check_vma=False)

    def pad(a):
        return a if padded == seeds else jnp.concatenate(
            [a, jnp.broadcast_to(a[:1], (padded - seeds,) + a.shape[1:])])

    def run(*args):
        args = [jax.tree.map(pad, a) if s == "seeds" else a for a, s in zip(args, in_specs)]
        token = _within_seeds.set(True)
        try:
            out = body(*args)
        finally:
            _within_seeds.reset(token)
        return jax.tree.map(lambda a: a[:seeds], out)

    return run


def shard_batch(tree, batch_axis: int = 0):
    """Constrains every array of ``tree`` (inside jit) to be split along ``batch_axis`` (not
    inside a seed-spread program, where each device holds whole seeds)."""
    if num_devices() == 1 or _within_seeds.get():
        return tree

    def constrain(x):
        spec = [None] * x.ndim
        spec[batch_axis] = "data"
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh(), P(*spec)))

    return jax.tree.map(constrain, tree)


def replicate(tree):
    """Places ``tree`` on every device (parameters, optimiser state, data sets)."""
    if num_devices() == 1:
        return tree
    return jax.device_put(tree, NamedSharding(mesh(), P()))


def check_batch(batch_size: int, key: str) -> None:
    """Data parallelism needs the batch to split evenly over the devices."""
    from scae.errors import InputError

    if batch_size % num_devices():
        raise InputError(f"config.{key}: {batch_size} does not split over {num_devices()} devices")


def initialize_distributed() -> bool:
    """Joins a multi-process run (GPU cluster, TPU pod) when the environment asks for one.

    ``jax.distributed.initialize()`` finds the coordinator by itself on TPU pods and under
    SLURM; elsewhere set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``. ``SCAE_DISTRIBUTED=1`` forces the call. Returns whether it was made.
    """
    import os

    env = os.environ
    wanted = (env.get("SCAE_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in env
              or int(env.get("SLURM_NTASKS", "1")) > 1)
    if wanted:
        jax.distributed.initialize()
    return wanted
