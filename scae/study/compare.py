"""The paper's central experiment: the CNN from the CAE stack against random initialisation,
over label sizes and seeds, with statistics. Resumable: finished runs are kept in
``compare/runs.jsonl`` and never redone; a running cell resumes from its checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scae import accounting, atomic, provenance
from scae import workdir as workdir_lib
from scae.data import inputs as inputs_lib
from scae.errors import InputError, is_device_oom
from scae.models import stack as stack_lib
from scae.report import tables as report
from scae.report import workdir_figures as figures
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining
from scae.train import driver


def check_label_sizes(config, data: inputs_lib.Inputs) -> None:
    """Raises :class:`InputError` for a label size the non-validation training set lacks."""
    n = data.train_images.shape[0]
    for size in config.compare.label_sizes:
        if size > n:
            raise InputError(f"config.compare.label_sizes: {size} labels asked, but only {n} "
                             f"non-validation training images exist")
        inputs_lib.labelled(data, size, 0)  # raises if a class has too few images


class Progress:
    """The whole job's progress: "cell 4/9, about 12 min left", from the measured speed of
    the cells trained so far (in seed-steps, so cells of different sizes compare)."""

    def __init__(self, cells: list[tuple[int, int]], log: Callable[[str], None]):
        self.cells, self.log = cells, log  # (steps per seed, seeds) of every cell to train
        self.done, self.units, self.seconds = 0, 0, 0.0
        self.t0 = time.perf_counter()

    def start(self) -> None:
        total = len(self.cells)
        left = sum(s * n for s, n in self.cells[self.done:])
        eta = (f", about {_minutes(left * self.seconds / self.units)} left" if self.units
               else "")
        self.log(f"cell {self.done + 1}/{total}{eta}")
        self.t0 = time.perf_counter()

    def finish(self) -> None:
        steps, seeds = self.cells[self.done]
        self.units += steps * seeds
        self.seconds += time.perf_counter() - self.t0
        self.done += 1


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def compare(config, data: inputs_lib.Inputs, workdir: Path,
            log: Callable[[str], None] = print) -> list[dict]:
    """Runs every missing (label size, arm, seed), then writes the tables and figures.

    Call :func:`check_label_sizes` first to fail before anything is written."""
    out = workdir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "runs.jsonl"
    rows = atomic.read_jsonl(rows_path)
    fc = config.finetune
    # Only the runs this config asks for, made with its settings, count as done or reported;
    # runs.jsonl keeps every record.
    asked = workdir_lib.asked_runs(config, rows)
    todo = []
    for size in config.compare.label_sizes:
        full = size == data.train_images.shape[0] and fc.get("full_epochs", 0)
        steps = driver.plan(size, fc.batch_size, full or fc.epochs, fc.min_steps).total_steps
        for arm in config.compare.arms:
            done = {r["seed"] for r in asked if r["label_size"] == size and r["arm"] == arm}
            seeds = [s for s in range(config.compare.num_seeds) if s not in done]
            groups = ([seeds] if config.compare.vmap_seeds else [[s] for s in seeds]) if seeds \
                else []
            todo += [(size, arm, group, steps) for group in groups]
    per_seed = bool(config.compare.get("stack_per_seed", False))
    # Seed 0's stack is needed by the embedding and filter figures, and each seed's (or seed
    # 0's, when stacks are not per seed) by its pretrained and frozen runs.
    if per_seed and config.compare.vmap_seeds:
        needed = sorted({0} | {s for _, arm, group, _ in todo if arm != "random" for s in group})
        stacks = dict(zip(needed, pretraining.pretrain_seeds(config, data.pretrain,
                                                           data.val_images, workdir, needed,
                                                           log=log)))
    else:
        stacks = {0: pretraining.pretrain(config, data.pretrain, data.val_images, workdir,
                                        log=log)}
    stack = stacks[0]
    if not (workdir / "pretrain" / "loss.png").exists():
        figures.pretrain_figures(config, stack, data.val_images, data.normalizer,
                                 workdir / "pretrain",
                                 atomic.read_jsonl(workdir / "pretrain" / "metrics.jsonl"),
                                 dataset_title=data.identity.title if data.identity else None)
        # The figures' programs and buffers would otherwise stay until the first cell ends,
        # adding to its peak.
        driver.release_freed_memory()
    progress = Progress([(steps, len(group)) for *_, group, steps in todo], log)
    # The code every run of this session is made by: the commit, and whether the tree had
    # uncommitted changes (publish refuses those unless told otherwise).
    code = provenance.git_state()

    def stack_of(seed: int) -> stack_lib.Stack:
        """Seed ``seed``'s stack: its own when stacks are per seed, else seed 0's."""
        i = seed if per_seed else 0
        if i not in stacks:
            stacks[i] = pretraining.pretrain(config, data.pretrain, data.val_images, workdir,
                                           log=log, seed_index=i)
        return stacks[i]

    for size, arm, group, _ in todo:
        progress.start()
        group_stacks = None if arm == "random" else [stack_of(s) for s in group]
        new, best = _run_group(config, data, group_stacks, size, arm, group, out, log)
        for r in new:
            r["dataset"] = config.dataset
            r["settings"] = workdir_lib.settings_digest(config, "compare")
            r.update(data.identity.to_record() if data.identity else {})
            r["pool_size"] = int(data.train_images.shape[0])
            # Which compare seed's stack the run started from (see pretraining.pretrain_dir).
            r["stack_seed"] = None if arm == "random" else (r["seed"] if per_seed else 0)
            r.update(code)
        # Every output of the cell is written before the record that says it is done.
        if arm in ("pretrained", "random"):
            with atomic.replacing(out / f"conv1_{arm}_{size}.npy") as tmp, tmp.open("wb") as f:
                np.save(f, np.asarray(best["conv1"]["w"][0]))
        rows = rows + new
        atomic.write_jsonl(rows_path, rows)
        write_tables(config, workdir_lib.asked_runs(config, rows), out)
        progress.finish()
        log(f"{arm} at {size} labels, seeds {group}: test error "
            + ", ".join(f"{r['test_error']:.2f}%" for r in new))
    rows = workdir_lib.asked_runs(config, rows)
    write_tables(config, rows, out)
    write_figures(config, data, stack, rows, out)
    return rows


def _run_group(config, data, stacks, size, arm, group, out, log):
    """Trains one group of seeds of a cell; under ``finetune.failure_rule = 'restart'``, each
    run that hit the rule trains again alone at half the rate (the same rule for every arm)."""
    rows, best = _train_group(config, data, stacks, size, arm, group, out, log)
    if config.finetune.get("failure_rule", "none") != "restart":
        return rows, best
    for i, r in enumerate(rows):
        if not r.get("failure_hit"):
            continue
        log(f"{arm} at {size} labels, seed {r['seed']}: training loss "
            f"{r['first_eval_train_loss']:.3f} at its first evaluation is not below chance "
            f"({r['chance_loss']:.3f}); training it again at half the rate "
            f"(finetune.failure_rule)")
        (again,), b = _train_group(config, data, stacks and [stacks[i]], size, arm, [r["seed"]],
                                   out, log, lr_factor=0.5, tag="_restart")
        rows[i] = dict(again, failure_restarts=1,
                       first_try_train_loss=r["first_eval_train_loss"])
        best = b if i == 0 else best
    return rows, best


def _train_group(config, data, stacks, size, arm, group, out, log, lr_factor=1.0, tag=""):
    ckpt = out / "ckpt" / f"{size}_{arm}_s{'-'.join(map(str, group))}{tag}"
    try:
        return finetuning.run_cell(config, data, stacks, size, arm, group, ckpt, log,
                                   lr_factor=lr_factor)
    except Exception as e:  # noqa: BLE001 - only a device out-of-memory falls back
        if not is_device_oom(e) or len(group) == 1:
            raise
        log(f"{arm} at {size} labels: {len(group)} seeds do not fit in memory together; "
            f"training them one at a time")
        rows, best = [], None
        for i, s in enumerate(group):
            r, b = _train_group(config, data, stacks and [stacks[i]], size, arm, [s], out, log,
                                lr_factor, tag)
            rows += r
            best = best or b
        return rows, best


@accounting.part("figures and tables")
def write_tables(config, rows: list[dict], out: Path) -> None:
    """runs.csv, summary.csv and summary.md from the run records."""
    report.write_runs_csv(rows, out / "runs.csv")
    # The pretraining records of every stack the runs started from (seed 0's, and the
    # per-seed ones), for the reconstruction error over stacks.
    used = sorted({r["stack_seed"] for r in rows if r.get("stack_seed") is not None} | {0})
    metrics = [atomic.read_jsonl(pretraining.pretrain_dir(out.parent, i) / "metrics.jsonl")
               for i in used]
    # The records carry the test split's identity (title, paper or not); older ones do not.
    identity = None if rows and "data_title" in rows[0] else config.dataset
    report.write_summary(rows, identity, out / "summary.csv", out / "summary.md",
                         stacks=[m for m in metrics if m] or None)


@accounting.part("figures and tables")
def write_figures(config, data: inputs_lib.Inputs, stack: stack_lib.Stack, rows: list[dict],
                  out: Path) -> None:
    """error_vs_labels.png, curves.png, filters_conv1.png and embedding.png."""
    figures.comparison_figures(config, data, stack, rows, out, out)
