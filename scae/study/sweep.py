"""A recipe search on the validation split: fine-tune the CNN of each arm at every point of
a grid of config overrides and rank the points by validation error, per arm.

The grid is ``config.sweep.axes``: each axis is a tuple of alternatives, each alternative a
dict of overrides (``{"finetune.learning_rate": 0.01}``; several keys when options go
together, e.g. standardisation off when ZCA is on). The points are the product of the axes.
``config.sweep.arms`` (default ``("random",)``) are the arms trained at every point: the
pretrained and frozen arms start from stacks pretrained once per seed (and per data and
pretraining setting) into the sweep's workdir, as compare's do. The runs are given no test
images, so the choice cannot see the test split.

The choice (:func:`choose`): a *recipe* is a point without its learning rate. Each arm gets
its best rate within each recipe; the recipe chosen is the one whose arms, each at its own
best rate, have the lowest mean validation error (with the random arm alone: the best point).
Then, with ``config.sweep.full_axes`` (e.g. ``finetune.full_epochs`` of 30, 60, 100), the
full-label cell (the whole labelled pool, no refit) is trained at every alternative with the
chosen recipe and rates, and the schedule of lowest mean validation error over the arms is
chosen: the one the refit then uses.

Records are appended to ``sweep.jsonl`` run by run (a point, an arm); a rerun skips the ones
it has.
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

from scae import atomic, provenance
from scae import config as cfglib
from scae import workdir as workdir_lib
from scae.data import inputs as inputs_lib
from scae.errors import InputError
from scae.models import ops
from scae.report import tables as report
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining
from scae.train import parallel

RECORDS = "sweep.jsonl"
BEST = "best.json"  # the choice, written once every run is recorded (read by config files)
RATE_KEY = "finetune.learning_rate"
# The per-run diagnostics of finetune.run_cell a sweep record keeps per seed.
RUN_DIAGNOSTICS = ("conv_rms", "conv_rms_random", "saturated_start", "first_eval_saturated",
                   "first_eval_max_grad_norm", "max_grad_norm")


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
    comparison's selection keys and the keys the grid sets, and without the keys that hold
    their default (:func:`scae.workdir.without_defaults`), so that a key added to the code
    later leaves the records of a sweep under way valid."""
    d = {k: v for k, v in workdir_lib.without_defaults(config).items()
         if k not in ("sweep", "compare", "preset")}
    # The keys the grid sets are the point's, not the base's: a config that later adopts the
    # chosen values keeps the records valid.
    axes = config.sweep.axes.to_dict() if "sweep" in config else {}
    full = config.sweep.get("full_axes") if "sweep" in config else None
    full = full.to_dict() if hasattr(full, "to_dict") else dict(full or {})
    # So are what the sweep chooses and what it fixes for every run (no refit): a config
    # that adopts the choice keeps the records valid.
    chosen = [{"finetune.arm_learning_rates": None, "finetune.full_epochs": None,
               "finetune.refit_full": None}]
    for alt in (a for alts in [*axes.values(), *full.values(), chosen] for a in alts):
        for key in alt:
            section, _, field = key.rpartition(".")
            node = d
            for s in section.split(".") if section else ():
                node = node.get(s, {})
            node.pop(field, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def apply(config: ml_collections.ConfigDict, point: Mapping) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with the point's dotted overrides. Every arm trains at
    the point's ``finetune.learning_rate`` (the base's per-arm rates are cleared unless the
    point sets them), and no cell is refit: each run is selected on validation."""
    c = cfglib.with_overrides(config, {"finetune.arm_learning_rates": (),
                                       "finetune.refit_full": False})
    c = cfglib.with_overrides(c, point, where="config.sweep.axes: ")
    cfglib.validate(c, "compare")
    return c


def arms_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.sweep.arms`` (default: the random arm alone), checked."""
    arms = tuple(config.sweep.get("arms", ("random",)))
    if not arms or any(a not in cfglib.ARMS for a in arms) or len(set(arms)) != len(arms):
        raise InputError(f"config.sweep.arms: expected distinct arms of "
                         f"{', '.join(cfglib.ARMS)}, got {arms!r}")
    return arms


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """``config.sweep.seeds``, checked: distinct whole numbers >= 0, at least one."""
    seeds = config.sweep.get("seeds")
    items = list(seeds) if isinstance(seeds, (list, tuple)) else None
    if (not items or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in items)
            or len(set(items)) != len(items)):
        raise InputError(f"config.sweep.seeds: expected distinct whole numbers >= 0, at least "
                         f"one, got {seeds!r}")
    return [int(s) for s in items]


def label_size_of(config: ml_collections.ConfigDict, pool: int | None = None) -> int:
    """``config.sweep.label_size``, checked: a whole number >= 1, and at most ``pool`` (the
    labelled images there are) when it is known."""
    size = config.sweep.get("label_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"config.sweep.label_size: expected a whole number >= 1, got {size!r}")
    if pool is not None:
        _check_fits(size, pool)
    return size


def _check_fits(size: int, pool: int) -> None:
    if size > pool:
        raise InputError(f"config.sweep.label_size: {size} labels asked for, the pool has "
                         f"{pool}")


def grid_and_schedule(config: ml_collections.ConfigDict) -> tuple[list[dict], list[dict]]:
    """The points of ``config.sweep.axes`` and the alternatives of ``config.sweep.full_axes``
    (none without it), as :func:`points` gives them."""
    def plain(axes):
        return axes.to_dict() if hasattr(axes, "to_dict") else axes

    full_axes = plain(config.sweep.get("full_axes"))
    return points(plain(config.sweep.axes)), points(full_axes) if full_axes else []


def _arm(r: Mapping) -> str:
    return r.get("arm", "random")  # records made before the sweep trained other arms


def _stage(r: Mapping) -> str:
    return r.get("stage", "grid")


def _key(r: Mapping) -> tuple:
    """What a record is the run of; the full-label stage's size is the pool's, whatever it is."""
    size = r["label_size"] if _stage(r) == "grid" else None
    return (_stage(r), r["point_id"], _arm(r), size, tuple(r["seeds"]))


def run(config: ml_collections.ConfigDict, workdir: Path,
        build: Callable[[ml_collections.ConfigDict], inputs_lib.Inputs] | None = None,
        log: Callable[[str], None] = print,
        ready: Callable[[], None] | None = None, fresh: bool = False) -> list[dict]:
    """Runs every (point, arm) of ``config.sweep`` not yet in ``workdir/sweep.jsonl`` and
    returns all the records (one per point and arm; the grid's, then the full-label
    schedule's): the point, the arm, the validation error of each seed, their mean and
    standard deviation, the epochs and the wall time. ``build`` makes the inputs of a config
    (default :func:`scae.data.inputs.build`); it is called once per distinct data setting
    (and once more, ahead, for a setting of other images, source or split, to check it).
    ``ready`` is called once the first data set has loaded and every run still to train has
    been checked against its data (classes, image size, label size), before anything is
    written, so a command leaves its workdir as it was for data that do not load or fit.
    ``fresh`` ignores the records already there (``ready`` is where a caller deletes them)."""
    arms = arms_of(config)
    seeds = tuple(seeds_of(config))
    label_size = label_size_of(config)
    grid, schedule = grid_and_schedule(config)
    configs = [apply(config, p) for p in grid]  # every point checked before any is run
    # The full-label stage trains the chosen recipe with each alternative; which recipe is
    # chosen is known only after the grid, so every recipe with every alternative is checked
    # now, lest a combination that cannot train stop the sweep half way.
    recipes = {point_id(recipe_of(p)): recipe_of(p) for p in grid}
    full = [apply(config, {**recipe, **alt}) for recipe in recipes.values() for alt in schedule]
    base = base_digest(config)
    records = [] if fresh else check_records(config, workdir, base)
    # What is still to train, checked against its data before the workdir changes; a
    # finished point is not (a rerun with nothing left to train loads no data).
    done = {_key(r) for r in records}
    planned = [(c, label_size) for point, c in zip(grid, configs)
               if any(("grid", point_id(point), arm, label_size, seeds) not in done
                      for arm in arms)] + [(c, None) for c in full]
    runner = _Runner(config, workdir, build, log, ready, base, records, planned)
    for i, (point, c) in enumerate(zip(grid, configs)):
        runner.point(c, point, "grid", label_size, arms, f"{i + 1}/{len(grid)}")
    asked = [runner.done[k] for k in runner.asked if k in runner.done]
    if schedule:
        top = choose(asked, arms, float(config.finetune.learning_rate))["chosen"]
        for j, alt in enumerate(schedule):
            point = {**top["recipe"], "finetune.arm_learning_rates":
                     list(cfglib.rate_items(top["arm_learning_rates"])), **alt}
            runner.point(apply(config, point), point, "schedule", None, arms,
                         f"full-label {j + 1}/{len(schedule)}")
    return [runner.done[k] for k in runner.asked if k in runner.done]


class _Runner:
    """The state of one sweep: the records so far, the data and stacks in memory."""

    def __init__(self, config, workdir: Path, build, log, ready, base: str, records: list,
                 planned: list):
        self.config, self.workdir, self.log, self.ready, self.base = (config, workdir, log,
                                                                     ready, base)
        self.build = build or (lambda c: inputs_lib.build(c.data, c.seed))
        self.seeds = seeds_of(config)
        self.records = records
        self.done = {_key(r): r for r in records}
        self.asked: list[tuple] = []
        self.data_key, self.data = None, None
        self.stacks: dict[str, list] = {}
        # (config, label size or None: the whole pool) of every run still to train, checked
        # against its data when the first data set loads, before anything is written.
        self.planned = planned
        self.checked = False

    def inputs(self, c) -> inputs_lib.Inputs:
        key = json.dumps(c.data.to_dict(), sort_keys=True)
        if key != self.data_key:
            self.data, self.data_key, self.stacks = None, None, {}  # one data setting at once
            facts = {} if self.checked else self.facts_of_others(c)
            full = self.build(c)
            if not self.checked:
                inputs_lib.check_classes_present(c.data.source, full.train_labels)
                facts[_shape_key(c)] = _facts(full)
                self.check_planned(facts)
                self.checked = True
            # No test images reach the runs: the choice is made on validation alone.
            self.data = dataclasses.replace(full, test_images=full.test_images[:0],
                                            test_labels=full.test_labels[:0])
            self.data_key = key
            if self.ready is not None:  # every run still to train fits its data
                self.ready()
                self.ready = None
        return self.data

    def facts_of_others(self, c) -> dict[str, tuple]:
        """:func:`_facts` of the data of every run still to train whose shape, classes or pool
        may differ from ``c``'s (another source, validation size, ...; rare), loaded one at a
        time: a bad one is refused before the workdir changes, not half way through."""
        facts: dict[str, tuple] = {}
        for other, _ in self.planned:
            shape = _shape_key(other)
            if shape != _shape_key(c) and shape not in facts:
                facts[shape] = _facts(self.build(other))
        return facts

    def check_planned(self, facts: Mapping[str, tuple]) -> None:
        """Raises :class:`InputError` for a run still to train that its data (``facts``, by
        :func:`_shape_key`) do not fit: more classes than its model outputs, images its
        kernels do not fit, more labels asked for than the pool holds."""
        stacks = set(arms_of(self.config)) != {"random"}
        for c, label_size in self.planned:
            image_shape, num_classes, pool = facts[_shape_key(c)]
            # Every conv layer trains (compare's check), the pretrained stacks' included.
            cfglib.check_model_fits(c, image_shape, num_classes, "compare")
            if label_size is not None:
                _check_fits(label_size, pool)
            if stacks and c.pretrain.layers:  # pretraining splits its batch over the devices
                parallel.check_batch(c.pretrain.batch_size, "pretrain.batch_size")

    def stacks_of(self, c, data: inputs_lib.Inputs) -> list:
        """Each seed's stack for ``c`` (its own when ``compare.stack_per_seed``, else seed
        0's), pretrained once into ``stacks/<pretraining settings>/`` of the workdir."""
        digest = workdir_lib.settings_digest(c, "pretrain")
        per_seed = bool(c.compare.get("stack_per_seed", False))
        if digest not in self.stacks:
            where = self.workdir / "stacks" / digest
            indices = self.seeds if per_seed else [0]
            self.log(f"sweep: the stacks of seeds {indices} (pretraining settings {digest})")
            self.stacks[digest] = dict(zip(indices, pretraining.pretrain_seeds(
                c, data.pretrain, data.val_images, where, indices, log=self.log)))
        got = self.stacks[digest]
        return [got[s if per_seed else 0] for s in self.seeds]

    def point(self, c, point: Mapping, stage: str, label_size: int | None,
              arms: Sequence[str], where: str) -> None:
        """Runs ``point`` (its config ``c``) for every arm not yet recorded, at
        ``label_size`` labels (None: the whole labelled pool)."""
        name = point_id(point)
        for arm in arms:
            key = (stage, name, arm, label_size, tuple(self.seeds))
            self.asked.append(key)
            if key in self.done:
                continue
            data = self.inputs(c)  # which checked the size against the pool
            size = int(len(data.train_labels)) if label_size is None else label_size
            self.log(f"sweep point {where}, {arm}: {name}")
            t0 = time.monotonic()
            tag = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            ckpt = self.workdir / "ckpt" / f"{stage}_{arm}_{tag}"  # a killed run resumes it
            stacks = None if arm == "random" else self.stacks_of(c, data)
            rows, _ = finetuning.run_cell(c, data, stacks, size, arm, self.seeds, ckpt,
                                          self.log)
            errs = [float(r["val_error"]) for r in rows]
            record = {"point_id": name, "point": dict(point), "base": self.base,
                      "label_size": size, "seeds": self.seeds, "val_error": errs,
                      "mean_val_error": float(np.mean(errs)),
                      "std_val_error": float(np.std(errs, ddof=1)) if len(errs) > 1
                      else math.nan,
                      "epochs": rows[0]["epochs"], "steps": rows[0]["steps"],
                      "best_epoch": [r["best_epoch"] for r in rows],
                      # The failure rule's verdict per seed, whatever finetune.failure_rule
                      # does with it: a point whose runs collapse shows it.
                      "failure_hit": [bool(r["failure_hit"]) for r in rows],
                      "first_eval_train_loss": [r["first_eval_train_loss"] for r in rows],
                      # and what the runs started from and met first (finetune.run_cell)
                      **{k: [r[k] for r in rows] for k in RUN_DIAGNOSTICS
                         if all(k in r for r in rows)},
                      "time_s": round(time.monotonic() - t0, 1), **provenance.git_state()}
            if arm != "random" or stage != "grid":
                record.update(arm=arm, stage=stage,
                              learning_rate=rows[0].get("learning_rate"))
            self.records.append(record)
            self.done[key] = record
            atomic.write_jsonl(self.workdir / RECORDS, self.records)
            shutil.rmtree(ckpt, ignore_errors=True)  # the record is the result; bound the disk
            self.log(f"  validation error {record['mean_val_error']:.2f}% "
                     f"({', '.join(f'{e:.2f}' for e in errs)})")


# The data settings that change only how the images are normalised, or how much of the test
# split (which the runs never see) is kept: never the image shape, the classes or the pool.
_SAME_SHAPE_KEYS = ("preprocess", "scale", "standardize", "zca_epsilon", "test_size")


def _shape_key(c: ml_collections.ConfigDict) -> str:
    """The data settings that decide what :func:`_facts` gives (and whether the data load)."""
    return json.dumps({k: v for k, v in c.data.to_dict().items() if k not in _SAME_SHAPE_KEYS},
                      sort_keys=True)


def _facts(data: inputs_lib.Inputs) -> tuple[tuple[int, int, int], int, int]:
    """What a run's config is checked against: the image shape, the number of classes and
    the labelled pool's size."""
    return data.image_shape, data.num_classes, int(len(data.train_labels))


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


def recipe_of(point: Mapping) -> dict:
    """A point without its learning rate: what every arm of a compare shares."""
    return {k: v for k, v in point.items() if k != RATE_KEY}


def arms_in(records: Sequence[Mapping]) -> tuple[str, ...]:
    """The arms the records trained, in the config's order."""
    found = {_arm(r) for r in records}
    return tuple(a for a in cfglib.ARMS if a in found)


def choose(records: Sequence[Mapping], arms: Sequence[str] | None = None,
           base_rate: float | None = None) -> dict:
    """The choice made on validation from a sweep's records.

    ``recipes``: per recipe (a grid point less its learning rate, in grid order) each arm's
    best rate there (``arm_learning_rates``), its mean validation error (``mean_val_error``)
    and their mean over the arms (``score``). ``chosen``: the recipe of the lowest score among
    those every arm finished (ties: the earlier), its rates, and, when the full-label stage
    ran, its ``schedule`` (the overrides of lowest mean validation error over the arms) and
    ``full_epochs`` (its ``finetune.full_epochs``, else None). A point without a learning
    rate is at ``base_rate``."""
    grid = [r for r in records if _stage(r) == "grid"]
    arms = tuple(arms or arms_in(grid))
    if not grid:
        raise InputError("the sweep has no finished points")
    groups: dict[str, list[Mapping]] = {}
    for r in grid:
        groups.setdefault(point_id(recipe_of(r["point"])), []).append(r)
    recipes = []
    for rs in groups.values():
        tops = {a: best([r for r in rs if _arm(r) == a]) for a in arms
                if any(_arm(r) == a for r in rs)}
        entry = {"recipe": recipe_of(rs[0]["point"]),
                 "arm_learning_rates": {a: float(t["point"].get(RATE_KEY, base_rate))
                                        if t["point"].get(RATE_KEY, base_rate) is not None
                                        else None for a, t in tops.items()},
                 "mean_val_error": {a: t["mean_val_error"] for a, t in tops.items()}}
        entry["score"] = (float(np.mean(list(entry["mean_val_error"].values())))
                          if len(tops) == len(arms) else math.nan)
        recipes.append(entry)
    complete = [e for e in recipes if not math.isnan(e["score"])]
    if not complete:
        raise InputError("the sweep has no point that every arm finished")
    top = min(complete, key=lambda e: e["score"])
    chosen = {"recipe": top["recipe"], "arm_learning_rates": top["arm_learning_rates"],
              "schedule": None, "full_epochs": None}
    # The full-label runs made with this recipe and these rates (a grid that later chose
    # otherwise leaves its old ones unread).
    with_rates = list(cfglib.rate_items(top["arm_learning_rates"]))
    schedule = [r for r in records if _stage(r) == "schedule"
                and r["point"].get("finetune.arm_learning_rates") == with_rates
                and all(r["point"].get(k) == v for k, v in top["recipe"].items())]
    by_point: dict[str, list[Mapping]] = {}
    for r in schedule:
        by_point.setdefault(r["point_id"], []).append(r)
    scored = [(float(np.mean([r["mean_val_error"] for r in rs])), rs[0]["point"])
              for rs in by_point.values() if {_arm(r) for r in rs} >= set(arms)]
    if scored:
        point = min(scored, key=lambda sp: sp[0])[1]
        alt = {k: v for k, v in point.items()
               if k not in top["recipe"] and k != "finetune.arm_learning_rates"}
        chosen.update(schedule=alt, full_epochs=alt.get("finetune.full_epochs"))
    return {"arms": list(arms), "recipes": recipes, "chosen": chosen}


def best_flags(choice: Mapping, grid_rates: bool = True) -> str:
    """The choice as command-line overrides for pipelines.compare: the chosen recipe, the
    learning rate (the random arm's, else the first arm's; ``grid_rates``: the grid sets
    one), the full-label schedule, and with several arms each arm's own rate
    (``--config.finetune.arm_learning_rates=<arm>:<rate>``, one flag per arm)."""
    top, arms = choice["chosen"], choice["arms"]
    rates = top["arm_learning_rates"]
    point = dict(top["recipe"])
    if grid_rates:
        point[RATE_KEY] = rates.get("random", rates[arms[0]])
    point.update(top.get("schedule") or {})
    text = flags(point)
    if len(arms) > 1:
        text += "".join(f" --config.finetune.arm_learning_rates={a}:{rates[a]:g}" for a in arms)
    return text


def flags(point: Mapping) -> str:
    """The point as command-line overrides, e.g. ``--config.finetune.learning_rate=0.01``."""
    def text(v):
        if isinstance(v, (list, tuple)):
            return "(" + ",".join(text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        return str(v)  # strings bare: the shell passes the flag's text on as it is
    return " ".join(f"--config.{k}={text(v)}" for k, v in sorted(point.items()))


def table(records: Sequence[Mapping], keys: Sequence[str] | None = None) -> str:
    """A markdown table of the points, best first, with mean ± std validation error; the
    columns are ``keys`` (default: every key the points set)."""
    if not records:
        return "No finished points."
    keys = sorted({k for r in records for k in r["point"]}) if keys is None else list(keys)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    lines = ["| rank | " + " | ".join(short) + " | validation error (%) | seeds | never trained "
             "| epochs | time (s) |",
             "| ---: | " + " | ".join("---" for _ in keys)
             + " | ---: | ---: | ---: | ---: | ---: |"]
    for rank, r in enumerate(sorted(records, key=lambda r: r["mean_val_error"]), 1):
        spread = "" if math.isnan(r["std_val_error"]) else f" ± {r['std_val_error']:.2f}"
        cells = [json.dumps(r["point"].get(k)) if isinstance(r["point"].get(k), str)
                 else str(r["point"].get(k)) for k in keys]
        lines.append(f"| {rank} | " + " | ".join(cells) +
                     f" | {r['mean_val_error']:.2f}{spread} | {len(r['seeds'])} | "
                     f"{_never_trained(r)} | {r['epochs']} | {r['time_s']:.0f} |")
    return "\n".join(lines)


def _never_trained(record: Mapping) -> str:
    """How many of the point's runs hit the failure rule (their training loss at the first
    evaluation not below chance, :func:`scae.study.finetune.hit_failure_rule`); '—' for
    records made before the sweep kept the verdict."""
    hits = record.get("failure_hit")
    return "—" if hits is None else f"{sum(hits)} of {len(hits)}"


DIAGNOSTICS_NOTE = (
    "Over the seeds: min–max, and the mean fraction of each hidden layer's units whose "
    f"activation is saturated (slope below {100 * ops.SATURATED:g}% of its largest) on "
    f"{finetuning.PROBE_IMAGES} of the run's training images.")


def diagnostics_table(records: Sequence[Mapping]) -> str:
    """A markdown table of what each point's runs started from and met by their first
    evaluation, per arm (:data:`RUN_DIAGNOSTICS`, :func:`scae.study.finetune.run_cell`): the
    training loss there, the largest gradient norm of a step until then, and the saturated
    fraction of each hidden layer's units at the start and there, over the seeds as min–max
    (the mean for the fractions). Empty when the records predate the diagnostics."""
    rows = [r for r in records if "first_eval_saturated" in r and "saturated_start" in r]
    if not rows:
        return ""
    layers = len(rows[0]["saturated_start"][0])
    names = [f"conv{k}" for k in range(1, layers)] + ["fc"]
    span = lambda xs, f: (f"{f(min(xs))}–{f(max(xs))}" if len(xs) > 1 else f(xs[0]))
    percent = lambda runs: " / ".join(f"{100 * np.mean([run[k] for run in runs]):.0f}"
                                      for k in range(layers))
    lines = ["| arm | point | first-evaluation loss | largest gradient norm until then | "
             f"saturated units at the start, % ({' / '.join(names)}) | at the first "
             "evaluation, % |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: cfglib.ARMS.index(_arm(r))):  # grid order per arm
        lines.append(
            f"| {report.ARM_LABELS.get(_arm(r), _arm(r))} | {r['point_id']} | "
            f"{span(r['first_eval_train_loss'], lambda v: f'{v:.2f}')} | "
            f"{span(r['first_eval_max_grad_norm'], lambda v: f'{v:.3g}')} | "
            f"{percent(r['saturated_start'])} | {percent(r['first_eval_saturated'])} |")
    return "\n".join(lines)


def markdown(records: Sequence[Mapping]) -> str:
    """The text of ``sweep.md``: the points ranked (per arm, when the sweep trained several),
    each arm's best rate per recipe, the full-label schedule, and the choice as flags."""
    grid = [r for r in records if _stage(r) == "grid"]
    arms = arms_in(grid)
    full = [r for r in records if _stage(r) == "schedule"]
    if arms == ("random",) and not full:  # the random arm alone: one ranking
        top = best(grid)
        diagnosed = diagnostics_table(grid)
        return (f"# Recipe sweep: validation error of the random arm at {top['label_size']:,} "
                f"labels\n\nTest images are not used. Mean ± standard deviation over seeds "
                f"{', '.join(map(str, top['seeds']))}.\n\n{table(grid)}\n\n"
                + (f"{DIAGNOSTICS_NOTE}\n\n{diagnosed}\n\n" if diagnosed else "")
                + f"Best: {top['point_id']}\n\n    {flags(top['point'])}\n")
    choice = choose(records, arms)
    top = best(grid)
    names = [report.ARM_LABELS.get(a, a) for a in arms]
    out = [f"# Recipe sweep: validation error of each arm at {top['label_size']:,} labels", "",
           f"Test images are not used. Mean ± standard deviation over seeds "
           f"{', '.join(map(str, top['seeds']))}. Arms: {', '.join(names)}.", ""]
    for arm, label in zip(arms, names):
        out += [f"## {label}", "", table([r for r in grid if _arm(r) == arm]), ""]
    out += ["## Each arm at its best rate, per recipe", "",
            "A recipe is a point less its learning rate; each arm takes its own best rate "
            "there. The recipe chosen has the lowest mean over the arms.", "",
            "| recipe | " + " | ".join(names) + " | mean |",
            "| --- | " + " | ".join("---:" for _ in arms) + " | ---: |"]
    for e in sorted(choice["recipes"], key=lambda e: (math.isnan(e["score"]), e["score"])):
        cells = [f"{e['mean_val_error'][a]:.2f} at {e['arm_learning_rates'][a]:g}"
                 if a in e["mean_val_error"] else "—" for a in arms]
        score = "—" if math.isnan(e["score"]) else f"{e['score']:.2f}"
        out.append(f"| {point_id(e['recipe']) or '(base)'} | " + " | ".join(cells)
                   + f" | {score} |")
    out.append("")
    chosen = choice["chosen"]
    diagnosed = diagnostics_table(grid)
    if diagnosed:
        out += ["## What the runs started from and met first", "", DIAGNOSTICS_NOTE, "",
                diagnosed, ""]
    if full:
        alt_keys = sorted({k for r in full for k in r["point"]}
                          - set(chosen["recipe"]) - {"finetune.arm_learning_rates"})
        out += [f"## The full-label schedule ({full[0]['label_size']:,} labels, no refit)", "",
                "With the chosen recipe and each arm's rate; the schedule chosen has the "
                "lowest mean over the arms.", ""]
        for arm, label in zip(arms, names):
            out += [f"{label}:", "", table([r for r in full if _arm(r) == arm], alt_keys), ""]
    rates = ", ".join(f"{label} {chosen['arm_learning_rates'][a]:g}"
                      for a, label in zip(arms, names))
    out += [f"Chosen: {point_id(chosen['recipe']) or '(base)'}; rates: {rates}"
            + (f"; full-label schedule: {point_id(chosen['schedule'])}"
               if chosen["schedule"] else ""), "",
            "    " + best_flags(choice, any(RATE_KEY in r["point"] for r in grid)), ""]
    return "\n".join(out)


def best_record(records: Sequence[Mapping], config: ml_collections.ConfigDict) -> dict:
    """The text of ``best.json``: :func:`choose` with the label size and seeds, what config
    files read (:func:`scae.config.sweep_choice`)."""
    choice = choose(records, arms_of(config), float(config.finetune.learning_rate))
    return {"label_size": int(config.sweep.label_size),
            "seeds": [int(s) for s in config.sweep.seeds], **choice}
