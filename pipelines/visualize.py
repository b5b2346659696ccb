"""Redraws every figure of an existing pretrain or compare workdir from what the training
wrote (checkpoints and records), without training, into <workdir>/figures/.

  python -m pipelines.visualize --workdir=runs/mnist_quick
  python -m pipelines.visualize --workdir=runs/mnist_quick --style=ggplot

Reads the workdir's config.json (--config is not needed; if given, it is used instead, e.g. to
point --config.data.source at the data set on this machine) and the stack's checkpoints
(pretrain/ckpt/layer<k>). The data must be those the workdir was made from (by content, as
settings.json records them): other data are refused before anything is drawn.
Writes into figures/:
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

import ml_collections
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


def check_same_data(config: ml_collections.ConfigDict, workdir: Path,
                    data: inputs.Inputs) -> None:
    """Raises :class:`InputError` unless ``data`` (built from ``config``) are the data the
    workdir's stack and runs were made from: figures of its stack drawn from other images
    would pass for its own. The content is compared, by the fingerprint each stage's
    settings.json records (:class:`scae.workdir.DataFingerprint`), not the path: a copy of
    the data elsewhere (--config.data.source on another machine) is the same data. A workdir
    older than the fingerprints is not checked here; its channel count still is (:func:`main`).
    """
    why = workdir_lib.data_changed(workdir, common.data_fingerprint(config, data))
    if why:
        recorded = workdir_lib.load_config(workdir)
        raise InputError(f"{workdir}: {why}; visualize draws its figures only from the data "
                         f"it was made from ({recorded.data.source}): point "
                         f"--config.data.source at that data")


def main(config, workdir: Path) -> None:
    # No other command writes while the figures are drawn; what a killed visualize left is
    # swept.
    workdir_lib.hold(workdir)
    config = workdir_lib.load_config(workdir) if config is None else config
    _use_style(_STYLE.value)
    data = inputs.build(config.data, config.seed)
    # The data first, so that other data are named as such, not as a checkpoint whose shapes
    # the data's channels do not fit.
    check_same_data(config, workdir, data)
    params = pretraining.from_workdir(workdir, config)  # its channels from layer 1's kernel
    channels = params.layers[0].spec.in_channels if params.depth else data.image_shape[-1]
    if channels != data.image_shape[-1]:
        raise InputError(f"{config.data.source}: images have {data.image_shape[-1]} "
                         f"channel(s), the stack in {workdir} was trained on {channels}")
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
