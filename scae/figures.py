"""The figures of a workdir, computed from a trained stack and its records."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from scae import atomic, plots, preprocess, stack

NUM_RECONSTRUCTIONS = 10


def stack_filters(config, params, k: int) -> np.ndarray:
    """Layer ``k``'s filters as pixel-space images (see :func:`scae.stack.project_filters`)."""
    return np.asarray(stack.project_filters(params, tuple(config.model.pool_sizes), k))


def pretrain_figures(config, params, images: np.ndarray, normalizer: preprocess.Normalizer,
                     out_dir: Path, records: list[dict] | None = None) -> list[Path]:
    """Filter grids and reconstructions of every layer, and the loss curves, into ``out_dir``.

    ``images`` are a few preprocessed float32 images to reconstruct.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = stack.layer_specs(config, images.shape[-1])
    pools = tuple(config.model.pool_sizes)
    written = []
    x = images[:NUM_RECONSTRUCTIONS]
    originals = preprocess.to_uint8(np.asarray(x), normalizer)
    for k in range(1, len(params) + 1):
        n_maps, kern = specs[k - 1].maps, specs[k - 1].kernel
        how = "" if k == 1 else ", projected to pixels through the layers below"
        path = out_dir / f"filters_layer{k}.png"
        plots.filters_figure(stack_filters(config, params, k),
                             f"CAE layer {k}: {n_maps} filters of {kern}x{kern}{how}", path)
        written.append(path)
        recon = jax.jit(lambda v: stack.decode_to_image(specs, pools, params[:k], v))(x)
        path = out_dir / f"reconstructions_layer{k}.png"
        how = "" if k == 1 else " (decoded back through the stack)"
        plots.reconstructions_figure(originals, preprocess.to_uint8(np.asarray(recon), normalizer),
                                     f"CAE layer {k} reconstructions{how}", path)
        written.append(path)
    if records:
        path = out_dir / "loss.png"
        plots.pretrain_loss_figure(records, path)
        written.append(path)
    return written


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (an absent file has none)."""
    if not path.exists():
        return []
    return atomic.read_jsonl(path)
