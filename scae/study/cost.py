"""What a study costs before it runs: the training work of every phase (a CAE layer of a
stack, a fine-tuning cell of seeds) in images and FLOPs (:mod:`scae.models.flops`), and its
time at measured step rates (``pipelines.benchmark`` records) on one device or several.

The model counts the training steps only (the accounting of a real run shows what else it
spends: ``scae.accounting``). Its time per phase is the phase's images over the measured
images per second of that step; with several devices the seeds of a phase spread over them
(:func:`scae.train.parallel.spread`), so a phase of s seeds on d devices takes ceil(s/d)
seeds' time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections

from scae import config as cfglib
from scae import workdir as workdir_lib
from scae.errors import InputError
from scae.models import flops
from scae.train import driver

# The training-split sizes of the data sets the presets name (a config on another source
# gives its own).
TRAIN_SIZES = {"mnist": 60000, "cifar10": 50000}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@dataclasses.dataclass(frozen=True)
class PhaseCost:
    """One phase of a study: ``images`` per seed in training steps' worth (steps x batch; a
    forward pass counts as a third of a step), ``seeds`` that train it, ``flops`` of all of
    them, and the benchmark step that times it."""

    name: str
    workload: str  # 'cnn' or 'cae'
    layer: int | None  # the CAE layer, for 'cae'
    images: int
    seeds: int
    flops: float


def _layer_inputs(config: ml_collections.ConfigDict,
                  image_shape: Sequence[int]) -> list[tuple[int, int]]:
    """(height, channels) of each CAE layer's input."""
    h, c, out = image_shape[0], image_shape[2], []
    for f, k, p in zip(config.model.features, config.model.kernel_sizes,
                       config.model.pool_sizes):
        out.append((h, c))
        h, c = -(-(h - k + 1) // p), f
    return out


def _stack_phases(config: ml_collections.ConfigDict, image_shape: Sequence[int], pool: int,
                  stacks: int, label: str = "") -> list[PhaseCost]:
    """The CAE layers of ``stacks`` stacks pretrained with ``config``'s settings."""
    pc = config.pretrain
    n_pretrain = min(config.data.pretrain_size or pool, pool)
    phases = []
    for k, (h, c) in enumerate(_layer_inputs(config, image_shape)[: pc.layers], start=1):
        p = driver.plan(n_pretrain, pc.batch_size, pc.epochs[k - 1])
        images = p.total_steps * p.batch_size
        step = flops.cae_step(h, c, config.model.kernel_sizes[k - 1],
                              config.model.features[k - 1], 1)
        phases.append(PhaseCost(f"pretrain layer {k}{label}", "cae", k, images, stacks,
                                float(step) * images * stacks))
    return phases


def _cell_phases(config: ml_collections.ConfigDict, image_shape: Sequence[int], pool: int,
                 size: int, arms: Sequence[str], seeds: int, label: str = "") -> list[PhaseCost]:
    """The fine-tuning of ``arms`` at ``size`` labels, ``seeds`` seeds each; ``size`` equal
    to ``pool`` is the full-label cell (refit and schedule as ``config.finetune`` says)."""
    fc = config.finetune
    cnn = flops.cnn_step(config.model, image_shape, 1)
    refit = fc.get("refit_full", False) and size == pool
    full = size == pool and fc.get("full_epochs", 0)  # the full-label schedule
    p = driver.plan(size + (config.data.validation_size if refit else 0), fc.batch_size,
                    full or fc.epochs, fc.min_steps)
    images = p.total_steps * p.batch_size
    # The cell is named as the tables name it: a refit's, every labelled image it saw.
    cell = (f"all ({size + config.data.validation_size:,})" if refit
            else f"all ({size:,})" if size == pool else f"{size:,} labels")
    phases = []
    for arm in arms:
        # The frozen arm trains its head on features computed once: about one forward
        # pass (a third of a training step) of its images.
        work = cnn / 3 * p.num_examples if arm == "frozen" else cnn * images
        steps_worth = images if arm != "frozen" else math.ceil(p.num_examples / 3)
        phases.append(PhaseCost(f"{arm} at {cell}{label}", "cnn", None, steps_worth, seeds,
                                float(work) * seeds))
    return phases


def study(config: ml_collections.ConfigDict, train_size: int | None = None,
          image_shape: Sequence[int] | None = None) -> list[PhaseCost]:
    """The phases of ``config``'s study: for a comparison each stack's layers, then every
    cell; for a sweep (a config with a ``sweep`` section, :mod:`scae.study.sweep`) the stacks
    of each pretraining setting its points need, every point's arms, then the full-label
    schedules."""
    name = config.dataset
    train_size = TRAIN_SIZES[name] if train_size is None else train_size
    image_shape = tuple(IMAGE_SHAPES[name] if image_shape is None else image_shape)
    pool = train_size - config.data.validation_size
    if "sweep" in config:
        return _sweep(config, image_shape, pool)
    cc = config.compare
    stacks = cc.num_seeds if cc.get("stack_per_seed", False) else 1
    phases = _stack_phases(config, image_shape, pool, stacks)
    for size in cc.label_sizes:
        phases += _cell_phases(config, image_shape, pool, min(size, pool), cc.arms,
                               cc.num_seeds)
    return phases


def _sweep(config: ml_collections.ConfigDict, image_shape: Sequence[int],
           pool: int) -> list[PhaseCost]:
    """A sweep's phases, as :func:`scae.study.sweep.run` trains them. The full-label
    schedules' recipe is the grid's choice, unknown before it runs; their cost depends on
    the epochs alone, so the base config stands for it."""
    # Imported here: the sweep module pulls in the data and training stack, which the
    # cost of a comparison does not need.
    from scae.study import sweep as sweep_lib

    arms = sweep_lib.arms_of(config)
    seeds = len(sweep_lib.seeds_of(config))
    stacked: set[str] = set()
    phases: list[PhaseCost] = []
    size = sweep_lib.label_size_of(config, pool)
    grid, schedule = sweep_lib.grid_and_schedule(config)
    for i, point in enumerate(grid, start=1):
        c = sweep_lib.apply(config, point)
        label = f", point {i}/{len(grid)}"  # the numbering of the sweep's own log
        digest = workdir_lib.settings_digest(c, "pretrain")
        if any(a != "random" for a in arms) and digest not in stacked:
            stacked.add(digest)
            stacks = seeds if c.compare.get("stack_per_seed", False) else 1
            phases += _stack_phases(c, image_shape, pool, stacks, label)
        phases += _cell_phases(c, image_shape, pool, size, arms, seeds, label)
    for j, alt in enumerate(schedule, start=1):
        c = sweep_lib.apply(config, alt)
        phases += _cell_phases(c, image_shape, pool, pool, arms, seeds,
                               f", full-label {j}/{len(schedule)} ({sweep_lib.flags(alt)})")
    return phases


def _checked(r, where: str) -> dict:
    """``r`` if it is a benchmark step record (a ``pipelines.benchmark --all`` line other than
    the machine's); else an InputError naming ``where`` and what is wrong."""
    bad = lambda why: InputError(f"{where}: not a benchmark record ({why})")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if not isinstance(r, Mapping):
        raise bad(f"expected a JSON object, got {type(r).__name__}")
    if r.get("workload") not in ("cnn", "cae"):
        raise bad(f"workload: expected 'cnn' or 'cae', got {r.get('workload')!r}")
    if not isinstance(r.get("arch"), str) or not r["arch"]:
        raise bad(f"arch: expected a data set name, got {r.get('arch')!r}")
    if r["workload"] == "cae" and not (whole(r.get("layer")) and r["layer"] >= 1):
        raise bad(f"layer: expected a CAE layer >= 1, got {r.get('layer')!r}")
    if "batch" in r and not (whole(r["batch"]) and r["batch"] >= 1):
        raise bad(f"batch: expected a whole number >= 1, got {r['batch']!r}")
    if not isinstance(r.get("dtype", "float32"), str):
        raise bad(f"dtype: expected a dtype name, got {r['dtype']!r}")
    rate = r.get("img_per_s")
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
            and math.isfinite(rate) and rate > 0):
        raise bad(f"img_per_s: expected a finite number > 0, got {rate!r}")
    return r


def rates(records: Sequence[Mapping], arch: str, source: str | os.PathLike | None = None,
          lines: Sequence[int] | None = None) -> dict[tuple[str, int | None], float]:
    """Measured images per second per (workload, layer) of ``arch`` from benchmark records
    (``pipelines.benchmark --all`` lines; the machine line is passed over). Every other record
    must be a step's: a workload ('cnn' or 'cae'), an arch, a layer >= 1 for 'cae', a batch
    >= 1 where given and a finite img_per_s > 0, or an InputError names it: as line
    ``lines[i]`` of the file ``source`` where these are given (:func:`read_records`), else by
    its place among ``records``."""
    out = {}
    for i, r in enumerate(records):
        if isinstance(r, Mapping) and "machine" in r:
            continue
        n = lines[i] if lines is not None else i + 1
        where = f"{os.fspath(source)} line {n}" if source is not None else f"benchmark record {n}"
        r = _checked(r, where)
        if r["arch"] == arch and r.get("dtype", "float32") == "float32":
            out[(r["workload"], r["layer"] if r["workload"] == "cae" else None)] = \
                float(r["img_per_s"])
    return out


def read_records(path: str | os.PathLike) -> tuple[list, list[int]]:
    """The JSON lines of the benchmark record ``path`` and the line number of each; an
    absent, empty or unreadable file, or a line that is not JSON, is an InputError naming
    the file (and the line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such benchmark record") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected a benchmark record (JSON lines), found a "
                         "folder") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the benchmark record ({e.strerror})") from None
    records, lines = [], []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{path} line {n}: not a benchmark record (not JSON: "
                             f"{e})") from None
        lines.append(n)
    if not records:
        raise InputError(f"{path}: not a pipelines.benchmark record (no JSON lines)")
    return records, lines


def rates_of(path: str | os.PathLike, arch: str) -> dict[tuple[str, int | None], float]:
    """:func:`rates` of the benchmark record file ``path``, its faults named by line."""
    records, lines = read_records(path)
    return rates(records, arch, path, lines)


def seconds(phases: Sequence[PhaseCost], measured: Mapping[tuple[str, int | None], float],
            devices: int = 1) -> float:
    """The training time of ``phases`` at the ``measured`` rates on ``devices`` devices, each
    phase's seeds spread over them. A phase whose step was not measured raises KeyError."""
    total = 0.0
    for ph in phases:
        rate = measured[(ph.workload, ph.layer)]
        total += ph.images * math.ceil(ph.seeds / devices) / rate
    return total


# The records the README's cost block reads: (column title, record under results/, devices).
README_RECORDS = (
    ("2-core Zen 4 (AVX-512)", "bench_zen4/benchmark_all.jsonl", 1),
    ("2-core Xeon (AVX-512 + AMX)", "bench_xeon/benchmark_all.jsonl", 1),
    ("1 H100", "bench_h100/benchmark_fp32.jsonl", 1),
    ("8 H100 (by the model)", "bench_h100/benchmark_fp32.jsonl", 8),
)


def duration(seconds: float) -> str:
    """'3 h 20 min', '12 min', '40 s'."""
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h {m:02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def readme_block(results: Path,
                 extra: Sequence[tuple[str, ml_collections.ConfigDict]] = ()) -> str:
    """The paper presets' training FLOPs and time on each committed benchmark record, then
    those of the ``extra`` (name, config) studies (a sweep, say)."""
    head = "| study | PFLOP | " + " | ".join(t for t, _, _ in README_RECORDS) + " |"
    rows = [head, "| --- | ---: |" + " ---: |" * len(README_RECORDS)]
    studies = [(f"configs/{d}.py:paper", cfglib.dataset_config(d, "paper"))
               for d in ("mnist", "cifar10")]
    for name, config in [*studies, *extra]:
        phases = study(config)
        cells = []
        for _, record, devices in README_RECORDS:
            path = results / record
            try:
                measured = rates_of(path, config.dataset) if path.is_file() else {}
                cells.append(duration(seconds(phases, measured, devices)))
            except KeyError:  # a record without every step of this data set
                cells.append("not measured")
        rows.append(f"| `{name}` | {sum(p.flops for p in phases) / 1e15:.1f} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)
