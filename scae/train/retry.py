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
from scae.errors import InputError

T = TypeVar("T")


def scale_file(ckpt_dir: Path) -> Path:
    """Where the learning-rate scale of the run checkpointed in ``ckpt_dir`` is kept."""
    return ckpt_dir.with_name(ckpt_dir.name + ".lr_scale.json")


def read_scale(path: Path) -> float:
    """The learning-rate scale remembered in ``path``; 1.0 when there is none.

    The file is written by :func:`halving_lr` only, so its value is a halving of the rate:
    1, 1/2, 1/4, ... Anything else (negative, zero, NaN, above 1, not a power of 2) was not
    written by a retry and would silently change the training (a negative scale is gradient
    ascent), so it is refused as bad input naming the file."""
    v = atomic.read_json(path, {})  # a torn file: the scale is unknown, start at 1
    if not isinstance(v, dict):
        return 1.0
    raw = v.get("lr_scale", 1.0)
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) \
        and 0 < raw <= 1 and math.log2(raw).is_integer() and raw >= 2.0 ** -60
    if not ok:
        raise InputError(f"{path}: lr_scale {raw!r} is not a halving of the learning rate "
                         f"(1, 0.5, 0.25, ...); delete the file to train at the config's rate")
    return float(raw)


def write_scale(path: Path, scale: float) -> None:
    """Remembers ``scale`` in ``path`` (no file for 1: the config's own rate)."""
    if scale != 1.0:
        atomic.write_text(path, json.dumps({"lr_scale": scale}))
    else:
        path.unlink(missing_ok=True)


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
            write_scale(scale_path, scale)
            log(f"{e}; retrying with the learning rate x{scale}")
