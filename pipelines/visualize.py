"""Figures from an existing pretrain or compare workdir.

  python -m pipelines.visualize --workdir=runs/mnist_quick

Reads the workdir's config.json (``--config`` is not needed; if given, only its flags'
overrides matter for reading data) and writes into ``figures/``: the stack's filters and
reconstructions per layer, the pretraining loss, a random-initialisation filter grid for
contrast, and for compare workdirs the first layer's filters after fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from pipelines import common
from scae import cnn, figures, inputs, plots, stack
from scae import workdir as workdir_lib


def main(config, workdir: Path) -> None:
    workdir_lib.hold(workdir)  # no other command writes while the figures are drawn
    config = common.load_workdir_config(workdir) if config is None else config
    data = inputs.build(config.data, config.seed)
    params = stack.load(config, workdir, data.image_shape[-1])
    out = workdir / "figures"
    written = figures.pretrain_figures(
        config, params, data.val_images, data.normalizer, out,
        figures.read_jsonl(workdir / "pretrain" / "metrics.jsonl"))
    fresh = cnn.init(config.model, data.image_shape, jax.random.PRNGKey(config.seed))
    panels = [("CAE stack, layer 1", figures.stack_filters(config, params, 1)),
              ("random initialisation", np.moveaxis(np.asarray(fresh["conv1"]["w"]), 3, 0))]
    for npy in sorted((workdir / "compare").glob("conv1_*_*.npy")):
        _, arm, size = npy.stem.split("_")
        panels.append((f"{arm} arm after fine-tuning, {size} labels",
                       np.moveaxis(np.load(npy), 3, 0)))
    path = out / "filters_conv1_compared.png"
    plots.filters_side_by_side(panels, path, "First-layer filters")
    written.append(path)
    common.log("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    common.run(main, needs_config=False)
