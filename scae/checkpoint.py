"""Orbax checkpoints of (parameters, optimiser state) plus a JSON record beside them.

Orbax writes each step into a temporary folder and renames it when complete, so a checkpoint
interrupted by a kill is never seen as the latest one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    """The checkpoints of one unit of work (a CAE layer, a fine-tuning cell) in ``directory``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 1):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                              item_names=("state", "record"))

    def latest_step(self) -> int | None:
        """The last complete step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves ``state`` (a pytree of arrays) and ``record`` (JSON) as ``step``, blocking."""
        state = jax.device_get(state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state saved at ``step``, with the structure, shapes and dtypes of ``like``."""
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        # Orbax returns plain containers; put the leaves back into ``like``'s structure
        # (optax states are named tuples).
        state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(out["state"]))
        return state, out["record"]

    def restore_raw(self, step: int) -> tuple[Any, dict]:
        """The state saved at ``step`` as plain nested containers of numpy arrays."""
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), record=ocp.args.JsonRestore()))
        return out["state"], out["record"]

    def close(self) -> None:
        self._manager.close()
