"""Greedy layer-wise CAE pretraining of the whole stack.

  python -m pipelines.pretrain --config=configs/mnist.py:quick --workdir=runs/mnist_quick

Writes config.json, pretrain/metrics.jsonl, a checkpoint per layer (pretrain/ckpt/layer<k>),
pretrain/filters_layer<k>.png, pretrain/reconstructions_layer<k>.png and pretrain/loss.png.
Rerunning on the same workdir resumes; finished layers are kept.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import common
from scae import accounting, atomic
from scae.data import inputs
from scae.report import workdir_figures as figures
from scae.study import pretrain as pretraining


def main(config, workdir: Path) -> None:
    with accounting.part("data loading and preprocessing"):
        data = inputs.build(config.data, config.seed)
    inputs.check_for(config, data, "pretrain")
    common.guard_workdir(config, workdir, "pretrain", common.overwrite(),
                         data)
    trained = pretraining.pretrain(config, data.pretrain, data.val_images, workdir, log=common.log)
    records = atomic.read_jsonl(workdir / "pretrain" / "metrics.jsonl")
    with accounting.part("figures and tables"):
        written = figures.pretrain_figures(
            config, trained, data.val_images, data.normalizer, workdir / "pretrain", records,
            dataset_title=data.identity.title if data.identity else None)
    common.log("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    common.run(main)
