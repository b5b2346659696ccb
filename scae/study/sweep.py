"""A recipe search on the validation split: fine-tune the randomly initialised CNN at every
point of a grid of config overrides and rank the points by validation error.

The grid is ``config.sweep.axes``: each axis is a tuple of alternatives, each alternative a
dict of overrides (``{"finetune.learning_rate": 0.01}``; several keys when options go
together, e.g. standardisation off when ZCA is on). The points are the product of the axes.
Only the random arm is trained, so the recipe is chosen for the baseline and pretraining gets
no say in it; and the runs are given no test images, so the choice cannot see the test split.
Records are appended to ``sweep.jsonl`` point by point; a rerun skips the points it has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from scae import atomic
from scae import config as cfglib
from scae.data import inputs as inputs_lib
from scae.errors import InputError
from scae.study import finetune as finetuning

RECORDS = "sweep.jsonl"


def points(axes: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """The product of the axes' alternatives, each point one dict of dotted overrides. Axes
    that touch ``data.`` come first, so that the points sharing data settings are adjacent."""
    if not axes:
        raise InputError("config.sweep.axes: expected at least one axis")
    names = sorted(axes, key=lambda a: (not any(k.startswith("data.")
                                                for alt in axes[a] for k in alt), a))
    for name in names:
        if not axes[name]:
            raise InputError(f"config.sweep.axes.{name}: expected at least one alternative")
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        point: dict = {}
        for alt in combo:
            point.update({str(k): _plain(v) for k, v in dict(alt).items()})
        out.append(point)
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def point_id(point: Mapping) -> str:
    """A stable name of a point: its overrides sorted, 'key=value' joined by ', '."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(point.items()))


def base_digest(config: ml_collections.ConfigDict) -> str:
    """A digest of the settings every point shares: the config without its sweep section, the
    comparison's selection keys and the keys the grid sets."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("sweep", "compare", "preset")}
    # The keys the grid sets are the point's, not the base's: a config that later adopts the
    # chosen values keeps the records valid.
    axes = config.sweep.axes.to_dict() if "sweep" in config else {}
    for alt in (a for alts in axes.values() for a in alts):
        for key in alt:
            section, _, field = key.rpartition(".")
            node = d
            for s in section.split(".") if section else ():
                node = node.get(s, {})
            node.pop(field, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def apply(config: ml_collections.ConfigDict, point: Mapping) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with the point's dotted overrides."""
    c = cfglib.with_overrides(config, point, where="config.sweep.axes: ")
    cfglib.validate(c, "compare")
    return c


def run(config: ml_collections.ConfigDict, workdir: Path,
        build: Callable[[ml_collections.ConfigDict], inputs_lib.Inputs] | None = None,
        log: Callable[[str], None] = print,
        ready: Callable[[], None] | None = None, fresh: bool = False) -> list[dict]:
    """Runs every point of ``config.sweep`` not yet in ``workdir/sweep.jsonl`` and returns all
    the records (one per point): the point, the validation error of each seed, their mean and
    standard deviation, the epochs and the wall time. ``build`` makes the inputs of a config
    (default :func:`scae.data.inputs.build`); it is called once per distinct data setting.
    ``ready`` is called once the first data set has loaded, before anything is written, so a
    command can leave no workdir behind for a source that does not load. ``fresh`` ignores the
    records already there (``ready`` is where a caller deletes them)."""
    sw = config.sweep
    build = build or (lambda c: inputs_lib.build(c.data, c.seed))
    seeds = [int(s) for s in sw.seeds]
    label_size = int(sw.label_size)
    grid = points(sw.axes.to_dict() if hasattr(sw.axes, "to_dict") else sw.axes)
    configs = [apply(config, p) for p in grid]  # every point checked before any is run
    path = workdir / RECORDS
    base = base_digest(config)
    records = [] if fresh else check_records(config, workdir, base)
    done = {r["point_id"] for r in records}
    data_key, data = None, None
    for i, (point, c) in enumerate(zip(grid, configs)):
        name = point_id(point)
        if name in done:
            continue
        key = json.dumps(c.data.to_dict(), sort_keys=True)
        if key != data_key:
            data, data_key = None, None  # one data setting in memory at a time
            full = build(c)
            # No test images reach the runs: the choice is made on validation alone.
            data = dataclasses.replace(full, test_images=full.test_images[:0],
                                       test_labels=full.test_labels[:0])
            data_key = key
            if ready is not None:
                ready()
                ready = None
        if label_size > len(data.train_labels):
            raise InputError(f"config.sweep.label_size: {label_size} labels asked for, the "
                             f"pool has {len(data.train_labels)}")
        log(f"sweep point {i + 1}/{len(grid)}: {name}")
        t0 = time.monotonic()
        ckpt = workdir / "ckpt" / f"point{i}"
        rows, _ = finetuning.run_cell(c, data, None, label_size, "random", seeds, ckpt, log)
        errs = [float(r["val_error"]) for r in rows]
        record = {"point_id": name, "point": dict(point), "base": base, "label_size": label_size,
                  "seeds": seeds, "val_error": errs, "mean_val_error": float(np.mean(errs)),
                  "std_val_error": float(np.std(errs, ddof=1)) if len(errs) > 1 else math.nan,
                  "epochs": rows[0]["epochs"], "steps": rows[0]["steps"],
                  "best_epoch": [r["best_epoch"] for r in rows],
                  "time_s": round(time.monotonic() - t0, 1)}
        records.append(record)
        atomic.write_jsonl(path, records)
        shutil.rmtree(ckpt, ignore_errors=True)  # the record is the result; bound the disk
        log(f"  validation error {record['mean_val_error']:.2f}% "
            f"({', '.join(f'{e:.2f}' for e in errs)})")
    order = {point_id(p): i for i, p in enumerate(grid)}
    return sorted((r for r in records if r["point_id"] in order),
                  key=lambda r: order[r["point_id"]])


def check_records(config: ml_collections.ConfigDict, workdir: Path,
                  base: str | None = None) -> list[dict]:
    """The sweep records in ``workdir``; refuses them (:class:`InputError`, one line) when they
    were made from another base config (``base``: its :func:`base_digest`, if known), since
    resuming would mix two recipes."""
    path = workdir / RECORDS
    records = atomic.read_jsonl(path)
    base = base or base_digest(config)
    if any(r.get("base") != base for r in records):
        raise InputError(f"{path}: its records were made from another base config (the config "
                         "outside its sweep section differs); use a new --workdir or pass "
                         "--overwrite to start the sweep again")
    return records


def best(records: Sequence[Mapping]) -> Mapping:
    """The record of lowest mean validation error (ties: the earlier point)."""
    if not records:
        raise InputError("the sweep has no finished points")
    return min(records, key=lambda r: r["mean_val_error"])


def flags(point: Mapping) -> str:
    """The point as command-line overrides, e.g. ``--config.finetune.learning_rate=0.01``."""
    def text(v):
        if isinstance(v, (list, tuple)):
            return "(" + ",".join(text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        return str(v)  # strings bare: the shell passes the flag's text on as it is
    return " ".join(f"--config.{k}={text(v)}" for k, v in sorted(point.items()))


def table(records: Sequence[Mapping]) -> str:
    """A markdown table of the points, best first, with mean ± std validation error."""
    if not records:
        return "No finished points."
    keys = sorted({k for r in records for k in r["point"]})
    short = [k.rsplit(".", 1)[-1] for k in keys]
    lines = ["| rank | " + " | ".join(short) + " | validation error (%) | seeds | epochs |"
             " time (s) |",
             "| ---: | " + " | ".join("---" for _ in keys) + " | ---: | ---: | ---: | ---: |"]
    for rank, r in enumerate(sorted(records, key=lambda r: r["mean_val_error"]), 1):
        spread = "" if math.isnan(r["std_val_error"]) else f" ± {r['std_val_error']:.2f}"
        cells = [json.dumps(r["point"].get(k)) if isinstance(r["point"].get(k), str)
                 else str(r["point"].get(k)) for k in keys]
        lines.append(f"| {rank} | " + " | ".join(cells) +
                     f" | {r['mean_val_error']:.2f}{spread} | {len(r['seeds'])} | "
                     f"{r['epochs']} | {r['time_s']:.0f} |")
    return "\n".join(lines)


def markdown(records: Sequence[Mapping]) -> str:
    """The text of ``sweep.md``: the points ranked and the best point as flags."""
    top = best(records)
    return (f"# Recipe sweep: validation error of the random arm at {top['label_size']:,} "
            f"labels\n\nTest images are not used. Mean ± standard deviation over seeds "
            f"{', '.join(map(str, top['seeds']))}.\n\n{table(records)}\n\n"
            f"Best: {top['point_id']}\n\n    {flags(top['point'])}\n")
