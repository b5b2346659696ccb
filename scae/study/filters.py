"""The paper's filter experiment: the same single-layer CAE trained under several variants
(plain, noise, max-pooling, both), with their filter grids side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_collections

from scae import atomic
from scae import config as cfglib
from scae.data import inputs as inputs_lib
from scae.report import plotting as plots
from scae.report import workdir_figures as figures
from scae.study import pretrain as pretraining


def variant_config(config, name: str) -> ml_collections.ConfigDict:
    """``config`` with the noise and sparsity of variant ``name``."""
    c = ml_collections.ConfigDict(config.to_dict())
    v = config.variants[name]
    c.pretrain.noise_level = float(v.noise_level)
    c.pretrain.noise = "mask" if v.noise_level > 0 else "none"
    c.pretrain.sparsity_pool = (int(v.sparsity_pool),)
    return c


def run(config, data: inputs_lib.Inputs, workdir: Path,
        log: Callable[[str], None] = print) -> Path:
    """Trains every variant (each resumable in ``workdir/<name>``) and writes
    ``workdir/filters.png`` with the filters and clean validation reconstruction MSE of each."""
    panels = []
    # ConfigDict sorts its keys; show the paper's order (plain, noise, pool, both) first.
    names = [n for n in cfglib.FILTER_VARIANTS if n in config.variants]
    names += [n for n in config.variants if n not in names]
    for name in names:
        c = variant_config(config, name)
        sub = workdir / name
        log(f"variant {name}: {config.variants[name].title}")
        params = pretraining.pretrain(c, data.pretrain, data.val_images, sub, log=log)
        records = atomic.read_jsonl(sub / "pretrain" / "metrics.jsonl")
        figures.pretrain_figures(c, params, data.val_images, data.normalizer, sub / "pretrain",
                                 records)
        mse = records[-1]["val_mse"]
        panels.append((f"{config.variants[name].title}\nvalidation MSE {mse:.4f}",
                       params.project_filters(1)))
    k = config.model.kernel_sizes[0]
    path = workdir / "filters.png"
    plots.filters_side_by_side(
        panels, path, f"{config.dataset}: single-layer CAE, {config.model.features[0]} filters "
        f"of {k}x{k}, {config.pretrain.epochs[0]} epochs")
    return path
