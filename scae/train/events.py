"""Live metrics: TensorBoard event files written while a run trains, to watch with
``tensorboard --logdir <workdir>`` (the ``tensorboard`` package). tensorboardX writes them
without TensorFlow or PyTorch. ``config.tensorboard = False`` turns them off.

The study writes one run per stack (``pretrain/events``: each layer's train and validation
MSE, images per second and learning rate) and per fine-tuning cell (``events/<cell>`` beside
the cell's checkpoints: each seed's validation error, the images per second and the learning
rate), so that a run's curves stay after its checkpoints are removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from scae import atomic


class Events:
    """Scalars into the event files of ``folder``; a no-op when ``folder`` is None. The file
    is opened at the first scalar: a phase that has nothing left to train writes none."""

    def __init__(self, folder: str | os.PathLike | None):
        self._folder = folder
        self._writer = None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """``values`` (tag -> number) at ``step``, flushed so that TensorBoard shows them at
        once."""
        if self._folder is None:
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter  # imported only by runs that write events

            Path(self._folder).mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self._folder))
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def enabled(config) -> bool:
    """Whether ``config`` asks for event files (``config.tensorboard``; configs recorded
    before the key existed do)."""
    return bool(config.get("tensorboard", True))


def for_config(config, folder: str | os.PathLike) -> Events:
    """:class:`Events` into ``folder`` when ``config`` asks for them, else a no-op (also in
    the processes of a multi-process run other than process 0, which writes no files:
    :func:`scae.atomic.writer`)."""
    return Events(folder if enabled(config) and atomic.writer() else None)
