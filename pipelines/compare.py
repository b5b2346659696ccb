"""Fine-tune the CNN from the CAE stack and from random initialisation, over the config's
label sizes and seeds, and compare them (pretrains first if the workdir has no stack).

  python -m pipelines.compare --config=configs/mnist.py:quick --workdir=runs/mnist_quick

Writes compare/runs.csv, compare/summary.csv, compare/summary.md, compare/error_vs_labels.png,
compare/curves.png, compare/filters_conv1.png and compare/embedding.png (and everything
pipelines.pretrain writes). Rerunning on the same workdir resumes; finished runs are kept.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import common
from scae import compare, inputs


def main(config, workdir: Path) -> None:
    data = inputs.build(config.data, config.seed)
    compare.check_label_sizes(config, data)
    common.guard_workdir(config, workdir, common.COMPARE_KEYS, common.overwrite())
    compare.compare(config, data, workdir, log=common.log)
    print((workdir / "compare" / "summary.md").read_text())


if __name__ == "__main__":
    common.run(main)
