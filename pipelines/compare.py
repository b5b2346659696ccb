"""Fine-tune the CNN from the CAE stack and from random initialisation, over the config's
label sizes and seeds, and compare them (pretrains first if the workdir has no stack).

  python -m pipelines.compare --config=configs/mnist.py:quick --workdir=runs/mnist_quick

Writes everything pipelines.pretrain writes, and in compare/:
  runs.jsonl             one record per run (label size, arm, seed, errors, validation curve):
                         the source of every table and figure
  runs.csv               the same, one row per run, without the curves
  summary.csv, summary.md  mean and spread per label size and arm; each arm's difference
                         from random, paired by seed, with its 95% CI and paired t-test p
                         (Holm-adjusted over the label sizes for pretrained - random); the
                         paper's figures beside (summary.md is printed)
  error_vs_labels.png, curves.png, filters_conv1.png, embedding.png   the figures
  conv1_<arm>_<labels>.npy   first-layer filters (kh, kw, channels, maps) of one fine-tuned
                         run per pretrained and random cell
  ckpt/<labels>_<arm>_s<seeds>/   the cell's latest checkpoint, what a killed run resumes from
Rerunning on the same workdir resumes; finished runs are kept. pipelines.visualize redraws
the figures from these files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

from pipelines import common
from scae import accounting, atomic, provenance
from scae import workdir as workdir_lib
from scae.data import inputs
from scae.study import compare
from scae.train import parallel


def main(config, workdir: Path) -> None:
    t0 = time.monotonic()
    # Whether compiled programs could come from the persistent cache: a cold start compiles all.
    cache = jax.config.jax_compilation_cache_dir
    cached = sum(1 for _ in Path(cache).iterdir()) if cache and Path(cache).is_dir() else 0
    with accounting.part("data loading and preprocessing"):
        data = inputs.build(config.data, config.seed)
    inputs.check_for(config, data, "compare")
    compare.check_label_sizes(config, data)
    common.guard_workdir(config, workdir, "compare", common.overwrite(),
                         data)
    resumed = (workdir / "pretrain" / "metrics.jsonl").exists()
    before = len(workdir_lib.asked_runs(config, atomic.read_jsonl(
        workdir / "compare" / "runs.jsonl")))
    rows = None
    try:
        rows = compare.compare(config, data, workdir, log=common.log)
    finally:
        # Interrupted sessions did work too: each one adds to the record, so a job resumed
        # over several sessions reports its whole wall time.
        if rows is None or len(rows) > before:
            command = "python -m pipelines.compare " + " ".join(sys.argv[1:])
            record = provenance.session_record(workdir / "machine.json",
                                               time.monotonic() - t0, command, resumed)
            together = config.compare.num_seeds if config.compare.vmap_seeds else 1
            spread = {"setting": config.compare.get("spread", "auto"),
                      "used": parallel.spread(config.compare.get("spread", "auto"), together)}
            atomic.write_text(workdir / "machine.json",
                              json.dumps(record | {"cache_entries_at_start": cached,
                                                   "spread": spread},
                                         indent=2) + "\n")
    if atomic.writer():  # the one process that wrote it (of several) prints it
        print((workdir / "compare" / "summary.md").read_text())


if __name__ == "__main__":
    common.run(main)
