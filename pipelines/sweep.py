"""Choose a fine-tuning recipe on the validation split: train the CNN of each arm of
``config.sweep.arms`` (default: the random arm) at every point of the config's grid
(``config.sweep``), rank the points by validation error per arm, choose each arm's rate, and
(with ``config.sweep.full_axes``) the full-label cell's schedule.

  python -m pipelines.sweep --config=configs/cifar10_sweep.py \\
      --config.data.source=cifar:/path/cifar-10-python.tar.gz --workdir=runs/cifar10_sweep

Writes in the workdir:
  sweep.jsonl     one record per point and arm (its overrides, each seed's validation error,
                  time)
  sweep.md        the points ranked per arm, best first, each arm's best rate per recipe, the
                  full-label schedule, and the choice as flags
  best_flags.txt  the choice as ``--config.<key>=<value>`` overrides for pipelines.compare:
                  the recipe, the schedule, and each arm's own rate
                  (``--config.finetune.arm_learning_rates=<arm>:<rate>``) when several arms ran
  best.json       the choice, per recipe too (configs/cifar10_ablation.py reads it); written
                  only once every run is recorded
  machine.json    the hardware and wall time (every session that worked on the sweep)
Test images never reach the runs. Rerunning resumes: points already recorded are kept.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipelines import common
from scae import atomic, provenance
from scae import workdir as workdir_lib
from scae.errors import InputError
from scae.study import sweep


def main(config, workdir: Path) -> None:
    t0 = time.monotonic()
    if "sweep" not in config:
        raise InputError("--config: has no sweep section (config.sweep.axes, label_size, "
                         "seeds); start from configs/cifar10_sweep.py")
    workdir_lib.check_writable(workdir)
    fresh = common.overwrite() and (workdir / sweep.RECORDS).exists()
    # Old records of another base config are refused here, before anything is written.
    resumed = not fresh and bool(sweep.check_records(config, workdir))
    started = []

    def ready() -> None:
        # Called once the grid is valid, the data loaded and every run still to train checked
        # against them (scae.study.sweep.run): now the workdir may change. The lock comes
        # before any deletion, so that a sweep still running here is refused, not wiped; its
        # lock file stays, or another process could lock a new one beside this one.
        workdir_lib.lock(workdir)
        workdir.mkdir(parents=True, exist_ok=True)  # made by the lock, but for its writer only
        if fresh:
            for path in sorted(workdir.iterdir()):
                if path.name != ".lock":
                    atomic.remove_tree(path)
        atomic.sweep(workdir)  # what a killed sweep left
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        started.append(True)

    records = []
    try:
        records = sweep.run(config, workdir, log=common.log, ready=ready, fresh=fresh)
    finally:
        if started:
            command = "python -m pipelines.sweep " + " ".join(sys.argv[1:])
            record = provenance.session_record(workdir / "machine.json",
                                               time.monotonic() - t0, command, resumed)
            atomic.write_text(workdir / "machine.json", json.dumps(record, indent=2) + "\n")
    text = sweep.markdown(records)
    best = sweep.best_record(records, config)
    grid_rates = any(sweep.RATE_KEY in r["point"] for r in records)
    atomic.write_text(workdir / "sweep.md", text)
    atomic.write_text(workdir / "best_flags.txt", sweep.best_flags(best, grid_rates) + "\n")
    atomic.write_text(workdir / sweep.BEST, json.dumps(best, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    common.run(main)
