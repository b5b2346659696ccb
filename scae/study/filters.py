"""The paper's filter experiment: the same single-layer CAE trained under several variants
(plain, noise, max-pooling, both), with their filter grids side by side.

Each variant of ``config.variants`` sets its own masking probability (``noise_level``) and
max-pooling sparsity window (``sparsity_pool``) on top of the main config. The variants' noise
is the paper's masking noise (Masci et al., 2011), so ``pretrain.noise`` must stay 'mask' and
``pretrain.noise_level`` 0 (each variant's own level replaces it). Every variant's config goes
through :func:`scae.config.validate` as the main config does, with the variant's key named,
before anything is written (:func:`check`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import ml_collections

from scae import atomic
from scae import config as cfglib
from scae.data import inputs as inputs_lib
from scae.errors import InputError
from scae.report import plotting as plots
from scae.report import workdir_figures as figures
from scae.study import pretrain as pretraining

# The variants' noise type: the paper's binomial masking noise. The titles ("50% noise") and
# the level's meaning (a probability in [0, 1)) both assume it, so another type is refused
# rather than applied.
NOISE = "mask"
# What a variant sets, and the key of the config each one replaces.
VARIANT_KEYS = {"noise_level": "pretrain.noise_level", "sparsity_pool": "pretrain.sparsity_pool"}
# A variant's name is its folder in the workdir: no path separators, no dot files.
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def variant_names(config: ml_collections.ConfigDict) -> list[str]:
    """The names of ``config.variants``, the paper's (plain, noise, pool, noise_pool) first:
    ConfigDict sorts its keys."""
    names = [n for n in cfglib.FILTER_VARIANTS if n in config.variants]
    return names + [n for n in config.variants if n not in names]


def check(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """Every variant's config (:func:`variant_config`) by name, in :func:`variant_names`'
    order, once the main config and all of them are valid for the filter experiment; else
    :class:`InputError` naming the first bad key. Writes nothing: call it before the workdir is
    touched."""
    if not isinstance(config.get("variants"), ml_collections.ConfigDict):
        raise InputError("--config: not a filter-experiment config (no 'variants'); use "
                         "configs/filters_mnist.py or configs/filters_cifar10.py")
    cfglib.validate(config, "filters")
    if not config.variants:
        raise InputError("config.variants: expected at least one variant, got none")
    p = config.pretrain
    # The figure shows layer 1's filters, and each variant sets one sparsity window.
    if p.layers != 1:
        raise InputError(f"config.pretrain.layers: the filter experiment trains single-layer "
                         f"CAEs; expected 1, got {p.layers!r}")
    if p.noise != NOISE:
        raise InputError(f"config.pretrain.noise: the filter experiment's variants use the "
                         f"paper's masking noise at each variant's noise_level; expected "
                         f"{NOISE!r}, got {p.noise!r}")
    if p.noise_level != 0:
        raise InputError(f"config.pretrain.noise_level: unused by the filter experiment (each "
                         f"variant has its own, config.variants.<name>.noise_level); expected "
                         f"0, got {p.noise_level!r}")
    return {name: variant_config(config, name) for name in variant_names(config)}


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """``config`` with the masking noise and sparsity window of variant ``name``, validated as
    the main config is (:func:`scae.config.validate`); a bad value raises
    :class:`InputError` naming ``config.variants.<name>.<key>``."""
    where = f"config.variants.{name}"
    if not _NAME.fullmatch(str(name)):
        raise InputError(f"{where}: a variant's name is its folder in the workdir; expected "
                         f"letters, digits, '_' or '-'")
    v = config.variants[name]
    wanted = ("title", *VARIANT_KEYS)
    keys = set(v.keys()) if isinstance(v, ml_collections.ConfigDict) else None
    if keys != set(wanted):
        got = "a value" if keys is None else ", ".join(sorted(keys)) or "none"
        raise InputError(f"{where}: expected the keys {', '.join(wanted)}, got {got}")
    if not isinstance(v.title, str):
        raise InputError(f"{where}.title: expected a string, got {v.title!r}")
    # Built from plain values, not set on a ConfigDict: a value of the wrong type must reach
    # validate (which names it) rather than ConfigDict's own TypeError.
    d = config.to_dict()
    d["pretrain"]["noise_level"] = v.noise_level
    # A level of 0 is no noise at all: the records and the stack's spec say 'none'.
    d["pretrain"]["noise"] = "none" if v.noise_level == 0 else NOISE
    d["pretrain"]["sparsity_pool"] = (v.sparsity_pool,)
    c = ml_collections.ConfigDict(d)
    try:
        cfglib.validate(c, "filters")
    except InputError as e:
        raise _variant_error(e, where, v) from None
    # Validated numbers: a config file's int level is the same level as the float.
    c.pretrain.noise_level = float(v.noise_level)
    return c


def _variant_error(error: InputError, where: str, variant) -> InputError:
    """``error``, raised on a variant's config, with the variant's own key named."""
    message = str(error)
    for field, key in VARIANT_KEYS.items():
        prefix = f"config.{key}:"
        if message.startswith(prefix):
            tail = message[len(prefix):]
            if field == "sparsity_pool":  # the variant gives one window, validate saw a tuple
                tail = tail.replace(repr((variant.sparsity_pool,)), repr(variant.sparsity_pool))
            return InputError(f"{where}.{field}:{tail}")
    return InputError(f"{where}: {message}")


def run(config: ml_collections.ConfigDict, data: inputs_lib.Inputs, workdir: Path,
        log: Callable[[str], None] = print) -> Path:
    """Trains every variant (each resumable in ``workdir/<name>``) and writes
    ``workdir/filters.png`` with the filters and clean validation reconstruction MSE of each.
    Raises :class:`InputError` before writing anything if a variant is invalid (:func:`check`).
    """
    variants = check(config)
    panels = []
    for name, c in variants.items():
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
