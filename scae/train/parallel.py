"""Data parallelism over every visible device with ``jax.sharding``.

A 1-D mesh over a ``data`` axis: each batch is split across devices along its first axis and
the parameters are replicated, so XLA inserts the gradient all-reduce. With one device every
function here is the identity, so the same code runs on a laptop, a GPU or a TPU slice.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@functools.cache
def mesh() -> Mesh:
    """The mesh over all devices (all hosts' devices after ``jax.distributed.initialize``)."""
    return Mesh(np.array(jax.devices()), ("data",))


def num_devices() -> int:
    return mesh().size


def shard_batch(tree, batch_axis: int = 0):
    """Constrains every array of ``tree`` (inside jit) to be split along ``batch_axis``."""
    if num_devices() == 1:
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
