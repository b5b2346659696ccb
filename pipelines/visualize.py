"""Redraws every figure of an existing pretrain or compare workdir from what the training
wrote (checkpoints and records), without training, into <workdir>/figures/.

  python -m pipelines.visualize --workdir=runs/mnist_quick
  python -m pipelines.visualize --workdir=runs/mnist_quick --style=ggplot

Reads the workdir's config.json (--config is not needed; if given, it is used instead, e.g. to
point --config.data.source at the data set on this machine) and the stack's checkpoints
(pretrain/ckpt/layer<k>). Writes into figures/:
  filters_layer<k>.png, reconstructions_layer<k>.png, loss.png   the stack, per layer
  filters_conv1_compared.png   first-layer filters: stack, the random arm's initialisation
                               (seed 0), and every fine-tuned run compare kept
                               (compare/conv1_<arm>_<labels>.npy)
and for a compare workdir, from compare/runs.jsonl: error_vs_labels.png, curves.png,
filters_conv1.png and embedding.png (as compare draws them).
--style restyles them: any matplotlib style name or .mplstyle file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags

from pipelines import common
from scae import atomic
from scae import workdir as workdir_lib
from scae.data import inputs
from scae.errors import InputError
from scae.models import modules as models
from scae.report import workdir_figures as figures
from scae.study import finetune
from scae.study import pretrain as pretraining

_STYLE = flags.DEFINE_string(
    "style", None, "A matplotlib style for the figures: a name (e.g. ggplot, seaborn-v0_8) or "
    "a .mplstyle file.")


def _use_style(style: str | None) -> None:
    import matplotlib.pyplot as plt

    if not style:
        return
    if style not in plt.style.available and not Path(style).is_file():
        raise InputError(f"--style: {style!r} is neither a matplotlib style ("
                         f"{', '.join(sorted(plt.style.available)[:6])}, ...) nor a file")
    try:
        plt.style.use(style)
    except (OSError, ValueError) as e:
        raise InputError(f"--style: {style}: cannot be read ({e})") from None


def main(config, workdir: Path) -> None:
    # No other command writes while the figures are drawn; what a killed visualize left is
    # swept.
    workdir_lib.hold(workdir)
    config = workdir_lib.load_config(workdir) if config is None else config
    _use_style(_STYLE.value)
    data = inputs.build(config.data, config.seed)
    params = pretraining.from_workdir(workdir, config, data.image_shape[-1])
    out = workdir / "figures"
    written = figures.pretrain_figures(
        config, params, data.val_images, data.normalizer, out,
        atomic.read_jsonl(workdir / "pretrain" / "metrics.jsonl"))
    # The random arm's real starting point: seed 0's initialisation, from the key compare gave it.
    spec = models.CNNSpec.from_config(config.model, data.image_shape)
    fresh = finetune.initial_model(spec, None, "random", finetune.seed_keys(config.seed, 0)[0])
    written.append(figures.filters_compared_figure(
        config, params, np.moveaxis(np.asarray(fresh.conv1.w[...]), 3, 0),
        workdir / "compare", out / "filters_conv1_compared.png"))
    rows = atomic.read_jsonl(workdir / "compare" / "runs.jsonl")
    if rows:
        written += figures.comparison_figures(config, data, params, rows, workdir / "compare",
                                              out)
    common.log("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    common.run(main, needs_config=False)
