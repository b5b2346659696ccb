"""The experiment configuration: defaults shared by every data set, and its validation.

Config files in ``configs/`` build on :func:`base_config` and pick a preset; the pipelines call
:func:`validate` before touching the workdir, so an impossible value fails with one clear line.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import ml_collections

from scae.errors import InputError

# The choices of the config's enumerated keys, as plain values: loading a config file must not
# import JAX. tests/test_config_choices.py checks each against what the code accepts.
ACTIVATIONS = ("scaled_tanh", "tanh", "sigmoid", "relu")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal", "he_normal")
CONV_IMPLS = ("auto", "xla", "matmul", "winograd")
SEED_BATCHINGS = ("auto", "vmap", "map")
UNLABELLED_SOURCES = ("npy", "folder")  # config.data.unlabelled_source prefixes
SPREADS = ("auto", "batch", "seeds")
COMPUTE_DTYPES = ("float32", "bfloat16")
NOISES = ("none", "mask", "gaussian")
DECODERS = ("tied", "untied", "upsample")
DECODER_OUTPUTS = ("activation", "linear")
PREPROCESS = ("none", "gcn", "gcn_zca")

ARMS = ("random", "pretrained", "frozen")
# What happens to a fine-tuning run whose training loss at its first evaluation has not fallen
# below chance, log(classes) (scae.study.finetune.hit_failure_rule), in every arm alike: 'mark'
# records it as failed; 'restart' trains it again at half the rate (lr_scale in its record),
# and marks it failed if it hits the rule again; 'none' records the diagnostics only.
FAILURE_RULES = ("none", "mark", "restart")
# jax.random.PRNGKey keeps only the low 32 bits of a seed: 2**32 would silently repeat seed 0.
MAX_SEED = 2**32 - 1
# Image channels the figures can draw (grayscale, RGB); others are refused up front.
CHANNELS = (1, 3)
# What each command needs of the config beyond :func:`validate`.


def base_config(dataset: str) -> ml_collections.ConfigDict:
    """The paper's architecture and a full-protocol default for ``dataset`` ('mnist'|'cifar10')."""
    c = ml_collections.ConfigDict()
    c.dataset = dataset  # the name the paper's table is looked up under
    c.seed = 0  # root of every random key: subsets, inits, noise, batch order
    # TensorBoard event files in the workdir while training (tensorboard --logdir WORKDIR)
    c.tensorboard = True

    c.data = ml_collections.ConfigDict()
    c.data.source = dataset  # see scae.data.load for the sources
    c.data.validation_size = 10000  # the last N training images; never trained on
    c.data.pretrain_size = 0  # unlabelled images for the CAEs; 0 = every non-validation image
    c.data.test_size = 0  # 0 = the whole test split
    c.data.scale = "unit"  # 'unit': [0, 1], 'symmetric': [-1, 1]
    c.data.standardize = False  # per-channel mean/std computed on the training split
    # 'gcn': per-image global contrast normalisation; 'gcn_zca': GCN, then ZCA whitening fitted
    # on the training split (the usual CIFAR-10 recipe). Whitened pixels reach well beyond a
    # scaled-tanh decoder's +-1.716, so the CAE then needs a linear decoder output.
    c.data.preprocess = "none"
    c.data.zca_epsilon = 0.1  # added to the eigenvalues: bounds how much ZCA amplifies noise
    c.data.tfds_data_dir = ""  # '' = tfds's default
    # Images with no labels to pretrain on, streamed from disk in bounded memory
    # (scae.data.stream): 'npy:<file.npy>' (uint8 (N, H, W, C)) or 'folder:<dir>'; '' =
    # pretrain on the labelled training split. pretrain_size then draws from these images.
    c.data.unlabelled_source = ""

    c.model = ml_collections.ConfigDict()
    c.model.features = (100, 150, 200)  # maps of the conv layers (= the CAEs' hidden maps)
    c.model.kernel_sizes = (5, 5, 3)
    c.model.pool_sizes = (2, 2, 1)  # CNN max-pool after each conv; also feeds CAE k+1
    c.model.fc_width = 300
    c.model.num_classes = 10
    c.model.activation = "scaled_tanh"  # 1.7159 * tanh(2x/3); the paper's constants are unknown
    c.model.init = "glorot_uniform"  # the same family for the CAEs and the random CNN
    c.model.conv_impl = "auto"  # 'xla' | 'matmul' (patches x kernel) | 'winograd' (matmul,
    # with Winograd's F(2x2) for 5x5 kernels over >= 16 maps); 'auto': winograd on CPU, xla
    # elsewhere.
    # Matmul operand dtype: 'bfloat16' multiplies bf16 operands with float32 accumulation (for
    # CPUs with avx512_bf16 or AMX, and GPUs); parameters, optimizer and results stay float32.
    # Winograd's layers stay float32 (bf16 would cost them 13x the error; scae.models.ops).
    c.model.compute_dtype = "float32"
    c.model.dropout = 0.0  # dropout rate before the classifier when fine-tuning; 0 = off (paper)

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.layers = 3  # how many CAEs of the stack to train (<= len(model.features))
    c.pretrain.sparsity_pool = (2, 2, 2)  # max-pool sparsity window per CAE; 1 turns it off
    c.pretrain.noise = "none"  # 'none' | 'mask' (binomial masking) | 'gaussian'
    c.pretrain.noise_level = 0.0  # masking probability, or the Gaussian's std
    c.pretrain.decoder = "tied"  # 'tied' (paper) | 'untied' | 'upsample' (NN-upsample + conv)
    # 'activation' (paper): reconstructions pass the activation, range about ±1.716 for
    # scaled_tanh; 'linear': for standardised or whitened inputs, which reach beyond it.
    c.pretrain.decoder_output = "activation"
    c.pretrain.epochs = (10, 10, 10)  # per layer
    c.pretrain.batch_size = 128
    # The paper used plain on-line gradient descent, rate and epochs unknown. Adam reaches
    # structured filters in far fewer epochs; 'sgd' with momentum 0 is the paper's optimiser.
    c.pretrain.optimizer = "adam"  # 'sgd' (with momentum) | 'adam'
    c.pretrain.learning_rate = 0.001
    c.pretrain.momentum = 0.9  # sgd only
    c.pretrain.schedule = "cosine"  # 'constant' | 'cosine'
    # At most this many steps in one compiled scan (the progress bar's granularity).
    c.pretrain.steps_per_call = 50
    c.pretrain.checkpoint_every_steps = 500  # periodic checkpoint within a layer
    # A checkpoint at most every this many seconds (and at the end of each layer or cell, and
    # when a signal stops the run): a kill loses at most that much training. 0: one at every
    # evaluation.
    c.pretrain.checkpoint_seconds = 60.0
    # Layer k's inputs (the frozen layers' features): 'always' computes them once and keeps
    # them, 'never' re-encodes every batch, 'auto' keeps them only where re-encoding would cost
    # more than a small share of the layer's own step (scae.study.pretrain.REENCODE_SHARE; the
    # paper's layer 2 re-encodes, layer 3 keeps them). The same numbers either way.
    c.pretrain.cache_features = "auto"
    c.pretrain.eval_size = 2000  # validation images for the reconstruction MSE
    # After a non-finite loss or parameter: halve the learning rate and resume from the last
    # good checkpoint, at most this many times (0: stop with a message naming where).
    c.pretrain.divergence_retries = 0

    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = 30
    c.finetune.min_steps = 3000  # small label sizes run more epochs to reach this many steps
    c.finetune.batch_size = 128
    c.finetune.optimizer = "sgd"
    c.finetune.learning_rate = 0.02
    c.finetune.momentum = 0.9
    c.finetune.schedule = "cosine"
    # The rate rises linearly over this many first steps to finetune.learning_rate, then
    # follows finetune.schedule over the rest; 0 = none. Every arm alike. A run that never
    # trains has met a gradient blow-up in its first epoch (results/README.md, the collapse
    # sweep), which a warm-up keeps small steps through.
    c.finetune.warmup_steps = 0
    c.finetune.weight_decay = 0.0
    c.finetune.evals = 30  # validation evaluations per run; the best one is reported
    # As pretrain.divergence_retries, for a fine-tuning cell (all its vmapped seeds together);
    # the scale used is kept in each run record (lr_scale).
    c.finetune.divergence_retries = 0
    c.finetune.steps_per_call = 50
    c.finetune.checkpoint_seconds = 60.0  # as pretrain.checkpoint_seconds
    # Augmentation inside the jitted step, keyed by (seed, step): every arm of a seed sees the
    # same augmented batches. Off by default, as in the paper.
    c.finetune.augment_translate = 0  # random shifts by up to N pixels, zero padding; 0 = off
    c.finetune.augment_flip = False  # random horizontal flips (for CIFAR-10, not for digits)
    # True: the cell whose label size is the whole labelled pool (and only that cell; the
    # smaller ones are untouched) trains on every training image, validation included, for
    # the schedule chosen on validation, and tests the final model; the refit does no
    # selection on validation. For a full-label cell comparable to the paper's 50k.
    c.finetune.refit_full = False
    # Fixed before any run, the same for every arm: see FAILURE_RULES.
    c.finetune.failure_rule = "mark"
    # Each arm's own learning rate, chosen on validation for that arm (pipelines.sweep with
    # sweep.arms writes them into its best_flags.txt): 'arm:rate' items, e.g.
    # ("pretrained:0.01", "frozen:0.1") (on the command line one flag per item); an arm not
    # named trains at finetune.learning_rate; () = every arm at it. Each run records its rate.
    c.finetune.arm_learning_rates = ()
    # Epochs of the cell that takes the whole labelled pool (and of its refit), as the sweep's
    # schedule search (sweep.full_axes) chose them on validation; 0 = finetune.epochs.
    c.finetune.full_epochs = 0

    c.compare = ml_collections.ConfigDict()
    c.compare.label_sizes = (1000, 10000, 50000)
    c.compare.num_seeds = 5
    c.compare.arms = ARMS
    c.compare.vmap_seeds = True  # train the seeds of one cell together, in one program
    # How those seeds share the program: 'vmap' (batched: fills a GPU or TPU), 'map' (one
    # after another: faster on a CPU) or 'auto' (map on the CPU, vmap elsewhere).
    c.compare.seed_batching = "auto"
    # With several devices: 'seeds' gives each device its own seeds of a phase (no
    # communication during the steps), 'batch' splits every batch over the devices; 'auto'
    # spreads the seeds when a phase has several. The same numbers up to float rounding.
    c.compare.spread = "auto"
    # True: seed i's pretrained and frozen arms start from a stack pretrained for seed i
    # (pretraining seed config.seed + i), so the spread over seeds includes pretraining's.
    # False: every seed shares the stack of seed 0 (cheaper; the summary says so).
    c.compare.stack_per_seed = True
    return c


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, object],
                   sep: str = ".", where: str = "") -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``overrides`` set, each named by its path with ``sep``
    between section and field (``finetune.learning_rate`` or ``finetune__learning_rate``);
    lists become tuples. Not validated. An unknown section or key raises :class:`InputError`
    naming it, after the prefix ``where``."""
    c = ml_collections.ConfigDict(config.to_dict())
    for name, value in overrides.items():
        *sections, field = name.split(sep)
        node = c
        for s in sections:
            if s not in node or not isinstance(node[s], ml_collections.ConfigDict):
                raise InputError(f"{where}{name}: no such config section {s!r}"
                                 f"{_did_you_mean(config, name, sep)}")
            node = node[s]
        if field not in node:
            raise InputError(f"{where}{name}: no such config key"
                             f"{_did_you_mean(config, name, sep)}")
        node[field] = tuple(value) if isinstance(value, list) else value
    return c


def _did_you_mean(config: ml_collections.ConfigDict, name: str, sep: str) -> str:
    close = closest_keys(config, name.replace(sep, "."))
    return f"; did you mean {' or '.join(k.replace('.', sep) for k in close)}?" if close else ""


def all_keys(config: Mapping) -> list[str]:
    """Every dotted key of ``config``: the sections and the leaves."""
    keys = []
    for key, value in config.items():
        keys.append(key)
        if hasattr(value, "items"):
            keys += [f"{key}.{k}" for k in all_keys(value)]
    return keys


def _best(word: str, candidates, n: int) -> list[str]:
    """difflib's close matches of ``word``, without those far behind the best one."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates),
                    key=lambda sc: -sc[0])
    scored = [(r, c) for r, c in scored if r >= 0.6]
    return [c for r, c in scored[:n] if r >= scored[0][0] - 0.1]


def closest_keys(config: Mapping, key: str, n: int = 3) -> list[str]:
    """The keys of ``config`` nearest to the mistyped dotted ``key``, best first: first among
    the keys of the deepest section that exists (``pretrain.epochz``: the pretrain keys), then
    among all keys, then by the last name alone (``epochs``: ``pretrain.epochs``, ...)."""
    keys = all_keys(config)
    parts = key.split(".")
    known = 0
    while known < len(parts) - 1 and ".".join(parts[:known + 1]) in keys:
        known += 1
    prefix = ".".join(parts[:known])
    if prefix:
        inside = [k[len(prefix) + 1:] for k in keys if k.startswith(prefix + ".")]
        close = [f"{prefix}.{k}" for k in _best(".".join(parts[known:]), inside, n)]
        if close:
            return close
    close = _best(key, keys, n)
    if not close:  # a right name under a wrong section or none: epochs -> pretrain.epochs
        leaves = _best(parts[-1], {k.split(".")[-1] for k in keys}, n)
        close = [k for k in keys if k.split(".")[-1] in leaves][:n]
    return close


def _positive_ints(c: ml_collections.ConfigDict, key: str, allow_zero: bool = False) -> None:
    value = c[key.split(".")[0]][key.split(".")[1]] if "." in key else c[key]
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
            bound = ">= 0" if allow_zero else ">= 1"
            raise InputError(f"config.{key}: expected integers {bound}, got {value!r}")


def _choice(c: ml_collections.ConfigDict, key: str, choices: Sequence[str]) -> None:
    section, name = key.split(".")
    if c[section][name] not in choices:
        raise InputError(f"config.{key}: expected one of {', '.join(choices)}, "
                         f"got {c[section][name]!r}")


def _positive_float(c: ml_collections.ConfigDict, key: str, allow_zero: bool = False) -> None:
    section, name = key.split(".")
    v = c[section][name]
    bad_type = isinstance(v, bool) or not isinstance(v, (int, float))
    if bad_type or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"config.{key}: expected a number {bound}, got {v!r}")


def _leaves(value, path: str) -> Iterator[tuple[str, object]]:
    if isinstance(value, (ml_collections.ConfigDict, dict)):
        for k in value.keys():
            yield from _leaves(value[k], f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _finite(c: ml_collections.ConfigDict) -> None:
    for path, v in _leaves(c, "config"):
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{path}: expected a finite number, got {v}")


def validate(c: ml_collections.ConfigDict, command: str | None = None) -> None:
    """Raises :class:`InputError` naming the first impossible value in ``c``.

    With ``command`` (``pretrain``, ``compare``, ...) also what that command needs: compare
    fine-tunes from the stack (``pretrain.layers`` >= 1) and picks each run's best epoch on
    the validation set (``data.validation_size`` >= 1); pretraining measures each layer on it.
    """
    _finite(c)
    for key in ("model.features", "model.kernel_sizes", "model.pool_sizes", "model.fc_width",
                "model.num_classes", "pretrain.sparsity_pool", "pretrain.epochs",
                "pretrain.batch_size", "pretrain.steps_per_call", "pretrain.checkpoint_every_steps",
                "pretrain.eval_size", "finetune.epochs", "finetune.batch_size", "finetune.evals",
                "finetune.steps_per_call", "compare.label_sizes", "compare.num_seeds"):
        _positive_ints(c, key)
    # An empty tuple passes every per-item check, yet these need a value: a comparison of no
    # label sizes trains nothing and reports no runs; a CNN of no conv layers has no top
    # layer for its classifier to read.
    for key, what in (("compare.label_sizes", "size"), ("model.features", "conv layer")):
        section, name = key.split(".")
        if not c[section][name]:
            raise InputError(f"config.{key}: expected at least one {what}, got "
                             f"{c[section][name]!r}")
    for key in ("data.validation_size", "data.pretrain_size", "data.test_size", "pretrain.layers",
                "pretrain.divergence_retries", "finetune.divergence_retries",
                "finetune.min_steps", "finetune.warmup_steps", "seed"):
        _positive_ints(c, key, allow_zero=True)
    for key in ("pretrain.checkpoint_seconds", "finetune.checkpoint_seconds"):
        _positive_float(c, key, allow_zero=True)
    if c.model.num_classes < 2:
        raise InputError(f"config.model.num_classes: a classifier needs at least 2 classes, "
                         f"got {c.model.num_classes}")
    n = len(c.model.features)
    for key in ("kernel_sizes", "pool_sizes"):
        if len(c.model[key]) != n:
            raise InputError(f"config.model.{key}: expected {n} values (one per model.features), "
                             f"got {len(c.model[key])}")
    if c.pretrain.layers > n:
        raise InputError(f"config.pretrain.layers: expected at most {n} (len(model.features)), "
                         f"got {c.pretrain.layers}")
    for key in ("sparsity_pool", "epochs"):
        if len(c.pretrain[key]) < c.pretrain.layers:
            raise InputError(f"config.pretrain.{key}: expected {c.pretrain.layers} values "
                             f"(one per pretrained layer), got {len(c.pretrain[key])}")
    # The choices are the ones the code implements, so the two cannot drift apart.
    _choice(c, "model.activation", ACTIVATIONS)
    _choice(c, "model.init", INITIALIZERS)
    _choice(c, "model.conv_impl", CONV_IMPLS)
    _choice(c, "compare.seed_batching", SEED_BATCHINGS)
    _choice(c, "compare.spread", SPREADS)
    _choice(c, "model.compute_dtype", COMPUTE_DTYPES)
    _choice(c, "data.scale", ("unit", "symmetric"))
    _choice(c, "pretrain.noise", NOISES)
    _choice(c, "pretrain.decoder", DECODERS)
    _choice(c, "pretrain.decoder_output", DECODER_OUTPUTS)
    # True/False: configs recorded before 'auto' existed.
    if c.pretrain.cache_features not in ("auto", "always", "never", True, False):
        raise InputError(f"config.pretrain.cache_features: expected 'auto', 'always' or "
                         f"'never', got {c.pretrain.cache_features!r}")
    for section in ("pretrain", "finetune"):
        _choice(c, f"{section}.optimizer", ("sgd", "adam"))
        _choice(c, f"{section}.schedule", ("constant", "cosine"))
        _positive_float(c, f"{section}.learning_rate")
        _positive_float(c, f"{section}.momentum", allow_zero=True)
    _positive_float(c, "finetune.weight_decay", allow_zero=True)
    _positive_float(c, "pretrain.noise_level", allow_zero=True)
    if c.pretrain.noise == "mask" and not c.pretrain.noise_level < 1:
        raise InputError(f"config.pretrain.noise_level: masking probability must be < 1, "
                         f"got {c.pretrain.noise_level}")
    if c.pretrain.noise == "none" and c.pretrain.noise_level > 0:
        raise InputError(f"config.pretrain.noise_level: {c.pretrain.noise_level} with "
                         f"pretrain.noise='none' would do nothing; set pretrain.noise to 'mask' "
                         f"or 'gaussian', or the level to 0")
    if c.pretrain.momentum >= 1 or c.finetune.momentum >= 1:
        raise InputError("config.*.momentum: expected a value in [0, 1)")
    arms = tuple(c.compare.arms)
    if not arms or any(a not in ARMS for a in arms):
        raise InputError(f"config.compare.arms: expected a non-empty subset of {', '.join(ARMS)}, "
                         f"got {arms!r}")
    # A value given twice would train (or report) the same runs twice: n doubled, the spread
    # and the tests wrong.
    for key, values in (("compare.arms", arms), ("compare.label_sizes", c.compare.label_sizes)):
        twice = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if twice:
            raise InputError(f"config.{key}: {', '.join(map(repr, twice))} given twice; "
                             f"expected each value once, got {tuple(values)!r}")
    if c.seed > MAX_SEED:
        raise InputError(f"config.seed: expected 0..{MAX_SEED} (a JAX random key holds 32 bits), "
                         f"got {c.seed}")
    if command is not None:
        _validate_for(c, command)
    _validate_recipe(c)
    _unlabelled_source(c)


def _unlabelled_source(c: ml_collections.ConfigDict) -> None:
    source = c.data.get("unlabelled_source", "")
    prefix, sep, rest = source.partition(":") if isinstance(source, str) else ("", "", "")
    if source != "" and not (sep and prefix in UNLABELLED_SOURCES and rest):
        raise InputError(f"config.data.unlabelled_source: expected '' (the labelled training "
                         f"images), npy:<file.npy> or folder:<dir>, got {source!r}")


def _bool(c: ml_collections.ConfigDict, key: str) -> None:
    section, name = key.split(".")
    if not isinstance(c[section][name], bool):
        raise InputError(f"config.{key}: expected True or False, got {c[section][name]!r}")


def _validate_recipe(c: ml_collections.ConfigDict) -> None:
    """The preprocessing, augmentation, dropout and refit options."""
    _choice(c, "data.preprocess", PREPROCESS)
    _positive_float(c, "data.zca_epsilon")
    if c.data.preprocess != "none" and c.data.standardize:
        raise InputError(f"config.data.standardize: give either standardize=True or "
                         f"preprocess={c.data.preprocess!r}, not both (GCN already normalises "
                         f"each image)")
    _positive_float(c, "model.dropout", allow_zero=True)
    if not c.model.dropout < 1:
        raise InputError(f"config.model.dropout: expected a rate in [0, 1), "
                         f"got {c.model.dropout!r}")
    _positive_ints(c, "finetune.augment_translate", allow_zero=True)
    _bool(c, "finetune.augment_flip")
    _bool(c, "finetune.refit_full")
    _choice(c, "finetune.failure_rule", FAILURE_RULES)
    arm_learning_rates(c)
    if "full_epochs" in c.finetune:
        _positive_ints(c, "finetune.full_epochs", allow_zero=True)
    _bool(c, "compare.stack_per_seed")


def arm_learning_rates(c: ml_collections.ConfigDict) -> dict[str, float]:
    """``finetune.arm_learning_rates`` as {arm: rate}: 'arm:rate' items, (arm, rate) pairs or
    a mapping. An unknown or repeated arm, or a rate that is not a number > 0, is one
    :class:`InputError` line."""
    value = c.finetune.get("arm_learning_rates", ())
    where = "config.finetune.arm_learning_rates"
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for item in value:
            if isinstance(item, str) and ":" in item:
                arm, _, rate = item.partition(":")
                items.append((arm.strip(), rate.strip()))
            elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
                items.append(tuple(item))
            else:
                raise InputError(f"{where}: expected 'arm:rate' items such as "
                                 f"'pretrained:0.01', got {item!r}")
    else:
        raise InputError(f"{where}: expected 'arm:rate' items such as ('pretrained:0.01',), "
                         f"got {value!r}")
    out: dict[str, float] = {}
    for arm, rate in items:
        if arm not in ARMS:
            raise InputError(f"{where}: unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
        if arm in out:
            raise InputError(f"{where}: arm {arm!r} is given more than one rate")
        try:
            number = float(rate) if not isinstance(rate, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise InputError(f"{where}: the rate of {arm!r} must be a number > 0, got {rate!r}")
        out[arm] = number
    return out


def arm_learning_rate(c: ml_collections.ConfigDict, arm: str) -> float:
    """The learning rate ``arm`` fine-tunes at: its own from ``finetune.arm_learning_rates``,
    else ``finetune.learning_rate``."""
    return arm_learning_rates(c).get(arm, float(c.finetune.learning_rate))


def rate_items(rates: Mapping[str, float]) -> tuple[str, ...]:
    """{arm: rate} as the 'arm:rate' items of ``finetune.arm_learning_rates``."""
    return tuple(f"{arm}:{rate:g}" for arm, rate in rates.items())


def sweep_choice(paths: Sequence, recipe: Mapping | None = None,
                 arms: Sequence[str] = ()) -> tuple[dict, str] | None:
    """What a finished sweep chose on validation (its ``best.json``, written by
    pipelines.sweep once every point is recorded), read from the first of ``paths`` that
    exists, and that path; None when none does, or it does not cover ``arms``.

    Without ``recipe``: the chosen recipe's per-arm rates and full-label epochs
    (``{"recipe", "arm_learning_rates", "full_epochs"}``). With ``recipe`` (dotted overrides):
    the per-arm rates tuned for the swept recipe that has those values (the best rate of each
    arm among the points of that recipe). A config file calls this; it imports no JAX."""
    for path in (Path(p) for p in paths):
        if not path.is_file():
            continue
        best = json.loads(path.read_text())
        if recipe is None:
            entry = best["chosen"]
        else:
            want = {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()}
            entry = next((e for e in best["recipes"]
                          if all(e["recipe"].get(k, v) == v for k, v in want.items())), None)
            if entry is None:
                return None
            entry = {"recipe": entry["recipe"], "arm_learning_rates": entry["arm_learning_rates"],
                     "full_epochs": None}
        if not set(arms) <= set(entry["arm_learning_rates"]):
            return None
        return entry, str(path)
    return None


def _validate_for(c: ml_collections.ConfigDict, command: str) -> None:
    trains = command in ("pretrain", "filters") and c.pretrain.layers > 0
    if command == "compare" and c.pretrain.layers < 1:
        raise InputError("config.pretrain.layers: compare fine-tunes from the pretrained stack, "
                         "expected >= 1, got 0 (run pipelines.pretrain for a stack-free check)")
    if (command == "compare" or trains) and c.data.validation_size < 1:
        why = ("picks each run's best epoch on the validation set" if command == "compare"
               else "measures each layer's reconstruction on the validation set")
        raise InputError(f"config.data.validation_size: {command} {why}; expected >= 1, got 0")


def check_model_fits(c: ml_collections.ConfigDict, image_shape: Sequence[int],
                     num_classes: int | None = None, command: str = "compare") -> None:
    """Raises :class:`InputError` unless images of ``image_shape`` (H, W, C) and a data set of
    ``num_classes`` classes fit the model: every conv layer the command trains keeps at least
    one pixel after its kernel and pool, the channels are ones the figures draw, and the
    model has an output for every class. Call it before anything is written."""
    h, w, channels = (int(d) for d in image_shape)
    if channels not in CHANNELS:
        # (N, C, H, W) arrays from PyTorch-style code are the commonest cause: say so.
        hint = (f"; the images look channels-first ({image_shape[0]} channels of "
                f"{image_shape[1]}x{image_shape[2]}): expected (N, H, W, C)"
                if h in CHANNELS else "")
        raise InputError(f"data: images with {channels} channels; supported are 1 (grayscale) "
                         f"and 3 (RGB){hint}")
    m = c.model
    layers = len(m.features) if command == "compare" else c.pretrain.layers
    for k in range(layers):
        kern, pool = m.kernel_sizes[k], m.pool_sizes[k]
        if h < kern or w < kern:
            raise InputError(
                f"config.model.kernel_sizes: layer {k + 1}'s kernel of {kern}x{kern} does not fit "
                f"its {h}x{w} input (images of {image_shape[0]}x{image_shape[1]} through kernels "
                f"{tuple(m.kernel_sizes)} and pools {tuple(m.pool_sizes)}); use larger images or "
                f"smaller kernels")
        h, w = -(-(h - kern + 1) // pool), -(-(w - kern + 1) // pool)
    if num_classes is not None and num_classes > m.num_classes:
        raise InputError(f"config.model.num_classes: the data set has {num_classes} classes, the "
                         f"model outputs {m.num_classes}; set config.model.num_classes="
                         f"{num_classes}")


# The paper's four variants: name -> (title, masking noise probability, sparsity window).
FILTER_VARIANTS = {
    "plain": ("plain", 0.0, 1),
    "noise": ("50% noise", 0.5, 1),
    "pool": ("2x2 max-pooling", 0.0, 2),
    "noise_pool": ("30% noise + 2x2 max-pooling", 0.3, 2),
}


def filter_experiment(c: ml_collections.ConfigDict, maps: int, kernel: int, preset: str):
    """Turns a data set's config into the paper's single-layer filter experiment: one CAE of
    ``maps`` filters of ``kernel`` x ``kernel``, trained once per variant in ``c.variants``."""
    c.preset = preset
    c.model.features = (maps,)
    c.model.kernel_sizes = (kernel,)
    c.model.pool_sizes = (2,)
    c.pretrain.layers = 1
    c.pretrain.noise = "mask"
    c.pretrain.sparsity_pool = (2,)
    c.pretrain.optimizer = "adam"
    c.pretrain.learning_rate = 0.001
    c.pretrain.schedule = "constant"
    c.pretrain.batch_size = 32
    c.pretrain.steps_per_call = 100
    c.pretrain.checkpoint_every_steps = 1000
    c.variants = ml_collections.ConfigDict(
        {name: {"title": t, "noise_level": p, "sparsity_pool": s}
         for name, (t, p, s) in FILTER_VARIANTS.items()})
    if preset == "smoke":
        _smoke_data(c)
        c.pretrain.epochs = (1,)
    elif preset == "quick":
        c.data.pretrain_size = 10000
        c.pretrain.epochs = (2,)
    else:
        c.pretrain.epochs = (20,)
    return c


def _smoke_data(c: ml_collections.ConfigDict) -> None:
    """The data sizes and progress granularity every ``smoke`` preset shares: seconds a run."""
    c.data.validation_size = 200
    c.data.pretrain_size = 256
    c.data.test_size = 200
    c.pretrain.steps_per_call = 4
    c.pretrain.eval_size = 64
    # A checkpoint at every evaluation, so that the fault tests meet every kind of save.
    c.pretrain.checkpoint_seconds = 0.0
    c.finetune.checkpoint_seconds = 0.0


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
    """Shrinks a comparison config to the ``smoke`` (tests) or ``quick`` (a few minutes on
    2 CPU cores) preset; ``paper`` keeps the full protocol of :func:`base_config`."""
    c.preset = preset
    if preset == "smoke":
        _smoke_data(c)
        c.model.features = (8, 8, 8)
        c.model.fc_width = 16
        c.pretrain.epochs = (1, 1, 1)
        c.pretrain.batch_size = 32
        c.pretrain.checkpoint_every_steps = 4
        c.finetune.epochs = 2
        c.finetune.min_steps = 0
        c.finetune.batch_size = 32
        c.finetune.evals = 2
        c.finetune.steps_per_call = 4
        c.compare.label_sizes = (100,)
        c.compare.num_seeds = 2
        c.compare.stack_per_seed = False
    elif preset == "quick":
        c.data.validation_size = 1000
        c.data.pretrain_size = 10000
        # Layer 1 is cheap; 4 epochs of small batches give it stroke-like filters.
        c.pretrain.epochs = (4, 1, 1)
        c.pretrain.batch_size = 32
        c.pretrain.learning_rate = 0.003
        c.pretrain.eval_size = 1000
        c.finetune.batch_size = 64
        c.finetune.epochs = 10
        c.finetune.min_steps = 200
        c.finetune.evals = 5
        c.compare.label_sizes = (1000,)
        c.compare.num_seeds = 3
        c.compare.stack_per_seed = False  # one stack for time; the summary says so


PRESETS = ("smoke", "quick", "paper")
DATASETS = ("mnist", "cifar10")


def dataset_config(dataset: str, preset: str) -> ml_collections.ConfigDict:
    """The comparison config of ``dataset`` ('mnist' or 'cifar10') with ``preset`` (one of
    :data:`PRESETS`): the one definition that ``configs/<dataset>.py:<preset>`` and
    :func:`scae.make_config` both return."""
    if dataset not in DATASETS:
        raise InputError(f"dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    preset = preset_arg(preset, PRESETS)
    c = base_config(dataset)
    c.data.source = dataset
    if dataset == "cifar10":
        c.data.validation_size = 5000
        c.data.standardize = True
        # Standardised (or whitened) pixels reach beyond the scaled tanh's +-1.716: the
        # decoder's output is linear so that the CAEs can reconstruct what they are given.
        c.pretrain.decoder_output = "linear"
    apply_preset(c, preset)
    if preset != "paper":
        return c
    if dataset == "mnist":
        c.compare.num_seeds = 10
        return c
    c.compare.label_sizes = (1000, 10000, 45000)
    # The recipe chosen on validation by configs/cifar10_sweep.py (results/cifar10_sweep):
    # GCN + ZCA whitening, learning rate 0.03, weight decay 5e-4, random translations by up
    # to 2 pixels and horizontal flips.
    c.data.standardize = False
    c.data.preprocess = "gcn_zca"
    c.finetune.learning_rate = 0.03
    c.finetune.weight_decay = 0.0005
    c.finetune.augment_translate = 2
    c.finetune.augment_flip = True
    # The full cell trains again on all 50k training images (validation included) for the
    # schedule chosen on validation, as the paper's 50k; see finetune.refit_full.
    c.finetune.refit_full = True
    return c


def preset_arg(arg: str | None, presets: Sequence[str]) -> str:
    """Checks the ``:<arg>`` of ``--config=configs/x.py:<arg>``; '' or None means 'quick'."""
    name = arg or "quick"
    if name not in presets:
        raise InputError(f"config preset {name!r}: expected one of {', '.join(presets)}")
    return name
