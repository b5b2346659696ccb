"""Recovery from divergence: halve the learning rate and resume from the last good checkpoint.

The scale in use is kept in a small JSON file beside the checkpoints, so a rerun goes on with
the rate that last worked rather than diverging again at the original one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from scae import atomic

T = TypeVar("T")


def scale_file(ckpt_dir: Path) -> Path:
    """Where the learning-rate scale of the run checkpointed in ``ckpt_dir`` is kept."""
    return ckpt_dir.with_name(ckpt_dir.name + ".lr_scale.json")


def read_scale(path: Path) -> float:
    """The learning-rate scale remembered in ``path``; 1.0 when there is none."""
    v = atomic.read_json(path, {})  # a torn file: the scale is unknown, start at 1
    return float(v.get("lr_scale", 1.0)) if isinstance(v, dict) else 1.0


def halving_lr(train: Callable[[float], T], scale_path: Path, retries: int,
               log: Callable[[str], None]) -> T:
    """Returns ``train(lr_scale)``. After a :class:`FloatingPointError` (a divergence, which
    ``train`` raises having kept its last good checkpoint), while fewer than ``retries``
    halvings were made, halves the scale, records it in ``scale_path`` and calls ``train``
    again, which resumes from that checkpoint. The last error propagates."""
    scale = read_scale(scale_path)
    while True:
        try:
            return train(scale)
        except FloatingPointError as e:
            if round(math.log2(1.0 / scale)) >= retries:
                raise
            scale /= 2
            atomic.write_text(scale_path, json.dumps({"lr_scale": scale}))
            log(f"{e}; retrying with the learning rate x{scale}")
