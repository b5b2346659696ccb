"""Orbax checkpoints of (parameters, optimiser state) plus a JSON record beside them.

Orbax writes each step into a temporary folder and renames it when complete, so a checkpoint
interrupted by a kill is never seen as the latest one (the next run sweeps the partial
folder, see :func:`scae.atomic.sweep`). A checkpoint damaged afterwards (a truncated or
altered file) is refused with one :class:`~scae.errors.InputError` line naming its folder and
the remedy; a save that fails for lack of space or permission raises
:class:`~scae.errors.WriteError`. A signal during a save is held until the save is complete.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from scae import interrupt
from scae.errors import InputError, Interrupted, WriteError, as_write_error
from scae.train import parallel


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Hides orbax's own error log (a traceback) of a failed save: the failure is raised,
    classified, and reported once by the caller."""
    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


@contextlib.contextmanager
def _muted_stderr(settle_s: float = 0.0) -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null inside the block (and ``settle_s`` after it).

    When a save fails, tensorstore's callbacks still call into the event loop that orbax has
    closed, and its threads print a 'RuntimeError: Event loop is closed' traceback each,
    straight to the descriptor (no Python hook sees them). They say nothing the raised error
    does not. The main thread writes nothing during a save, so nothing else is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        if settle_s and sys.exc_info()[0] is not None:
            time.sleep(settle_s)  # let the orphaned callbacks fire while muted
        os.dup2(saved, 2)
        os.close(saved)


class Checkpoints:
    """The checkpoints of one unit of work (a CAE layer, a fine-tuning cell) in ``directory``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 1):
        self.directory = Path(os.path.abspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._broken = False
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "record"))
        except Exception as e:  # noqa: BLE001 - classified below
            if parallel.peer_lost(e) is not None:
                raise
            raise self._failure(e, None) from e

    def latest_step(self) -> int | None:
        """The last complete step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves ``state`` (a pytree of arrays) and ``record`` (JSON) as ``step``, blocking."""
        state = jax.device_get(state)
        with interrupt.deferred(), _quiet_orbax(), _muted_stderr(settle_s=0.5):
            try:
                self._manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                    force=True)
                self._manager.wait_until_finished()
            except (Exception, Interrupted) as e:
                self._broken = True  # closing orbax after a failure prints thread tracebacks
                if isinstance(e, Interrupted):
                    raise
                error = as_write_error(e)
                if error is None:
                    raise
                raise WriteError(self.directory / str(step), error.cause) from e

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state saved at ``step``, with the structure, shapes and dtypes of ``like``."""
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        out = self._restore(step, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        # Orbax returns plain containers; put the leaves back into ``like``'s structure
        # (optax states are named tuples).
        try:
            state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(out["state"]))
        except (ValueError, TypeError) as e:
            raise self._failure(e, step) from None
        return state, out["record"]

    def restore_raw(self, step: int) -> tuple[Any, dict]:
        """The state saved at ``step`` as plain nested containers of numpy arrays."""
        out = self._restore(step, ocp.args.Composite(
            state=ocp.args.StandardRestore(), record=ocp.args.JsonRestore()))
        return out["state"], out["record"]

    def _restore(self, step: int, args) -> dict:
        try:
            with _muted_stderr(settle_s=0.5):
                out = self._manager.restore(step, args=args)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types
            self._broken = True
            raise self._failure(e, step) from None
        if not isinstance(out.get("record"), dict):
            self._broken = True
            raise self._failure(ValueError("the record is not a JSON object"), step)
        return out

    def _failure(self, error: BaseException, step: int | None) -> Exception:
        """What to raise for ``error`` met while reading the checkpoint of ``step``: a peer
        of a multi-process run lost in orbax's collectives is no damage, and stays itself."""
        if parallel.peer_lost(error) is not None:
            return error
        write = as_write_error(error)
        if write is not None:
            return write
        where = self.directory if step is None else self.directory / str(step)
        text = " ".join(str(error).split())
        text = text if len(text) <= 160 else text[:157] + "..."
        return InputError(f"{where}: damaged checkpoint ({type(error).__name__}: {text}); "
                          f"delete {self.directory} to redo that unit, or rerun with "
                          "--overwrite")

    def close(self) -> None:
        if not self._broken:
            self._manager.close()
