"""The paper's central experiment: the CNN from the CAE stack against random initialisation,
over label sizes and seeds, with statistics. Resumable: finished runs are kept in
``compare/runs.jsonl`` and never redone; a running cell resumes from its checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scae import atomic, driver, figures, finetuning, inputs as inputs_lib, report
from scae import stack as stack_lib
from scae.errors import InputError

def check_label_sizes(config, data: inputs_lib.Inputs) -> None:
    """Raises :class:`InputError` for a label size the non-validation training set lacks."""
    n = data.train_images.shape[0]
    for size in config.compare.label_sizes:
        if size > n:
            raise InputError(f"config.compare.label_sizes: {size} labels asked, but only {n} "
                             f"non-validation training images exist")
        inputs_lib.labelled(data, size, 0)  # raises if a class has too few images


def is_device_oom(error: BaseException) -> bool:
    """Whether ``error`` is the accelerator (or host) running out of memory for a compiled
    program, the one failure that training fewer seeds at once can cure; a full disk is not."""
    return (type(error).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(error)
            and not isinstance(error, OSError))


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
    # The stack is needed by the pretrained arms and by the embedding and filter figures.
    stack = stack_lib.pretrain(config, data.pretrain, data.val_images, workdir, log=log)
    if not (workdir / "pretrain" / "loss.png").exists():
        figures.pretrain_figures(config, stack, data.val_images, data.normalizer,
                                 workdir / "pretrain",
                                 figures.read_jsonl(workdir / "pretrain" / "metrics.jsonl"),
                                 dataset_title=data.identity.title if data.identity else None)
    rows_path = out / "runs.jsonl"
    rows = figures.read_jsonl(rows_path)
    fc = config.finetune
    todo = []
    for size in config.compare.label_sizes:
        steps = driver.plan(size, fc.batch_size, fc.epochs, fc.min_steps).total_steps
        for arm in config.compare.arms:
            done = {r["seed"] for r in rows if r["label_size"] == size and r["arm"] == arm}
            seeds = [s for s in range(config.compare.num_seeds) if s not in done]
            groups = ([seeds] if config.compare.vmap_seeds else [[s] for s in seeds]) if seeds \
                else []
            todo += [(size, arm, group, steps) for group in groups]
    progress = Progress([(steps, len(group)) for *_, group, steps in todo], log)
    for size, arm, group, _ in todo:
        progress.start()
        new, best = _run_group(config, data, stack, size, arm, group, out, log)
        for r in new:
            r["dataset"] = config.dataset
            r.update(data.identity.to_record() if data.identity else {})
            r["pool_size"] = int(data.train_images.shape[0])
            # Every seed's pretrained and frozen arms start from the one stack of config.seed.
            r["stack_seed"] = None if arm == "random" else int(config.seed)
        # Every output of the cell is written before the record that says it is done.
        if arm in ("pretrained", "random"):
            with atomic.replacing(out / f"conv1_{arm}_{size}.npy") as tmp, tmp.open("wb") as f:
                np.save(f, np.asarray(best["conv1"]["w"][0]))
        rows = rows + new
        atomic.write_jsonl(rows_path, rows)
        write_tables(config, rows, out)
        progress.finish()
        log(f"{arm} at {size} labels, seeds {group}: test error "
            + ", ".join(f"{r['test_error']:.2f}%" for r in new))
    write_tables(config, rows, out)
    write_figures(config, data, stack, rows, out)
    return rows


def _run_group(config, data, stack, size, arm, group, out, log):
    ckpt = out / "ckpt" / f"{size}_{arm}_s{'-'.join(map(str, group))}"
    try:
        return finetuning.run_cell(config, data, stack, size, arm, group, ckpt, log)
    except Exception as e:  # noqa: BLE001 - only a device out-of-memory falls back
        if not is_device_oom(e) or len(group) == 1:
            raise
        log(f"{arm} at {size} labels: {len(group)} seeds do not fit in memory together; "
            f"training them one at a time")
        rows, best = [], None
        for s in group:
            r, b = _run_group(config, data, stack, size, arm, [s], out, log)
            rows += r
            best = best or b
        return rows, best


def write_tables(config, rows: list[dict], out: Path) -> None:
    """runs.csv, summary.csv and summary.md from the run records."""
    report.write_runs_csv(rows, out / "runs.csv")
    metrics = figures.read_jsonl(out.parent / "pretrain" / "metrics.jsonl")
    # The records carry the test split's identity (title, paper or not); older ones do not.
    identity = None if rows and "data_title" in rows[0] else config.dataset
    report.write_summary(rows, identity, out / "summary.csv", out / "summary.md",
                         stacks=[metrics] if metrics else None)


def write_figures(config, data: inputs_lib.Inputs, stack: stack_lib.Stack, rows: list[dict],
                  out: Path) -> None:
    """error_vs_labels.png, curves.png, filters_conv1.png and embedding.png."""
    figures.comparison_figures(config, data, stack, rows, out, out)
