"""Greedy layer-wise pretraining of CAE stacks, one path for one stack or many.

Layer k trains on the max-pooled, subsampled hidden maps of the frozen layers 1..k-1 (the
CNN's pooling). The stacks of several compare seeds train together: layer k of every seed that
still needs it is one :class:`scae.train.driver.Phase` over those seeds
(``compare.seed_batching``: vmapped, or one after another in one program), whose frozen layers
below are each seed's own, passed to the loss as the phase's context. One stack is a group of
one seed on the same path.

Where it lives in a workdir: seed i's stack in :func:`pretrain_dir` (``pretrain/`` for seed 0,
``pretrain/seed<i>/`` for the others), its records in ``metrics.jsonl`` and each finished layer
in ``ckpt/layer<k>``. A group of one seed trains in that folder, so its periodic checkpoints
let a killed layer resume; a group of several checkpoints in
``pretrain/ckpt_seeds/layer<k>_s<seeds>`` until done, then each seed's layer is written to its
own folder and the shared one removed. A finished layer, from either kind of group, is kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scae import accounting, atomic, provenance
from scae import workdir as workdir_lib
from scae.data import inputs as inputs_lib
from scae.data import preprocess
from scae.errors import InputError, is_device_oom
from scae.models import flops
from scae.models import modules as models
from scae.models.stack import EVAL_BATCH, Stack, layer_specs
from scae.train import driver, events, optim, parallel, retry

Array = jax.Array
# pretrain.cache_features='auto' re-encodes a layer's inputs on every step when the frozen
# layers below cost at most this share of the layer's own training step.
REENCODE_SHARE = 0.05
# Stacks trained together cache their layer inputs for every seed of a group: the groups are
# sized so that the caches take at most this share of the device's memory, or
# CACHE_BYTES_HOST where the device does not report its size (the CPU).
CACHE_SHARE = 0.25
CACHE_BYTES_HOST = 2 << 30
SEEDS_CKPT = "ckpt_seeds"  # pretrain/<this>/layer<k>_s<seeds>: a layer of several stacks
# The code that trained a layer (provenance.git_state), kept in its evaluations' records.
CODE_KEYS = ("git_commit", "git_dirty")


def pretrain_dir(workdir: str | os.PathLike, seed_index: int = 0) -> Path:
    """Where the stack of compare seed ``seed_index`` keeps its records and checkpoints:
    ``pretrain/`` for seed 0 (the stack every seed shares when stacks are not per seed),
    ``pretrain/seed<i>/`` for the others."""
    folder = Path(workdir) / "pretrain"
    return folder if seed_index == 0 else folder / f"seed{seed_index}"


def ckpt_dir(workdir: str | os.PathLike, k: int, seed_index: int = 0) -> Path:
    """The checkpoint folder of layer ``k`` of seed ``seed_index``'s stack."""
    return pretrain_dir(workdir, seed_index) / "ckpt" / f"layer{k}"


def seed_config(config: ml_collections.ConfigDict, seed_index: int) -> ml_collections.ConfigDict:
    """``config`` with the pretraining seed of compare seed ``seed_index`` (config.seed + i):
    its own initialisation, noise and batch order."""
    if seed_index == 0:
        return config
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = int(config.seed) + seed_index
    return c


def pretrain(config: ml_collections.ConfigDict, images: Array, val_images: Array,
             workdir: str | os.PathLike, log: Callable[[str], None] = print,
             seed_index: int = 0) -> Stack:
    """Trains (or resumes, or loads the finished) stack of compare seed ``seed_index``.

    ``images`` are the unlabelled pretraining images and ``val_images`` the held-out ones for
    the validation reconstruction error, both preprocessed float32 NHWC; ``images`` may
    instead stream from disk (a :class:`scae.train.driver.Source` with a ``shape``, such as
    :class:`scae.data.stream.PretrainStream`): each chunk of steps then reads the images it
    trains on, and layers above the first re-encode them through the frozen layers on every
    step, since caching their inputs would hold the whole set. It is :func:`pretrain_seeds`
    of one seed.
    """
    return _pretrain(config, images, val_images, Path(workdir), [int(seed_index)], log)[0]


def pretrain_seeds(config: ml_collections.ConfigDict, images: Array, val_images: Array,
                   workdir: str | os.PathLike, seed_indices: Sequence[int],
                   log: Callable[[str], None] = print) -> list[Stack]:
    """The stacks of compare seeds ``seed_indices``, trained together; one per seed, in that
    order. Each seed's stack is the same (up to float rounding) whichever seeds it trains
    with: its keys, batch order and checkpoints are its own.

    Memory: vmapped steps hold every seed's activations (mapped ones one seed's at a time), and
    cached layer inputs (``pretrain.cache_features``, decided per layer as for one seed) take
    seeds times the memory of one seed's. A layer that caches trains its seeds in groups whose
    caches fit in :func:`cache_budget`, one seed at least. On a device out-of-memory the stacks
    are trained one after another, keeping the layers finished so far. A divergence retry
    (``pretrain.divergence_retries``) halves the learning rate of every seed of the phase.
    """
    seeds = list(dict.fromkeys(int(i) for i in seed_indices))
    workdir = Path(workdir)
    if len(seeds) > 1:
        try:
            return _pretrain(config, images, val_images, workdir, seeds, log)
        except Exception as e:  # noqa: BLE001 - only a device out-of-memory falls back
            if not is_device_oom(e):
                raise
        # Past the handler, so that its traceback no longer holds the failed phase's buffers.
        driver.release_freed_memory()
        log(f"the stacks of seeds {_seed_list(seeds)} do not fit in memory together; "
            f"training them one after another")
        return [_pretrain(config, images, val_images, workdir, [i], log)[0] for i in seeds]
    return _pretrain(config, images, val_images, workdir, seeds, log)


def _pretrain(config, images, val_images, workdir: Path, seeds: list[int],
              log) -> list[Stack]:
    """:func:`pretrain_seeds` without the out-of-memory fallback."""
    pc = config.pretrain
    configs = [seed_config(config, i) for i in seeds]
    settings = [workdir_lib.settings_digest(c, "pretrain") for c in configs]
    for i in seeds:
        pretrain_dir(workdir, i).mkdir(parents=True, exist_ok=True)
    specs = layer_specs(config, images.shape[-1])
    stacks = [Stack(specs, config.model.pool_sizes, rngs=nnx.Rngs(c.seed)) for c in configs]
    keys = [jax.random.PRNGKey(c.seed) for c in configs]
    logs = [_prefixed(log, i) if seeds != [0] else log for i in seeds]
    val_images = parallel.replicate(val_images[: pc.eval_size])
    if not isinstance(images, driver.Source):
        images = parallel.replicate(images)
    records: list[list[dict]] = [[] for _ in seeds]
    for k in range(1, len(specs) + 1):
        p = driver.plan(images.shape[0], pc.batch_size, pc.epochs[k - 1])
        todo = []
        for j, i in enumerate(seeds):
            evals = _finished_layer(stacks[j].layers[k - 1], ckpt_dir(workdir, k, i),
                                    p.total_steps)
            if evals is None:
                todo.append(j)
                continue
            logs[j](f"layer {k}: finished earlier ({p.total_steps} steps), kept")
            records[j] += _layer_records(k, evals, settings[j])
        for group in _seed_groups(pc.cache_features, stacks[0], k, images, todo, log):
            new = _train_layer(config, [stacks[j] for j in group], k, images, val_images,
                               [keys[j] for j in group], [seeds[j] for j in group], workdir,
                               [records[j] for j in group], [settings[j] for j in group],
                               logs[group[0]] if len(group) == 1 else log)
            for j, r in zip(group, new):
                records[j] += r
    for i, r in zip(seeds, records):
        atomic.write_jsonl(pretrain_dir(workdir, i) / "metrics.jsonl", r)
    if len(seeds) > 1:
        shutil.rmtree(workdir / "pretrain" / SEEDS_CKPT, ignore_errors=True)  # leftovers
    return stacks


def _seed_groups(setting, stack: Stack, k: int, images: Array, todo: list[int],
                 log) -> list[list[int]]:
    """The groups in which layer k of the seeds ``todo`` (positions in the seed list) trains:
    one, unless the cached inputs of them all would exceed :func:`cache_budget`."""
    if len(todo) <= 1 or k == 1 or not _caches(setting, stack, images, k):
        return [todo] if todo else []
    graphdef, params = models.split(stack)
    one = jax.eval_shape(lambda q, x: models.merge(graphdef, q).features(x, k - 1), params,
                         jax.ShapeDtypeStruct(images.shape, images.dtype))
    per_seed = math.prod(one.shape) * one.dtype.itemsize
    budget = cache_budget()
    size = max(1, budget // per_seed)
    if size >= len(todo):
        return [todo]
    log(f"layer {k}: the cached inputs of {len(todo)} seeds would take "
        f"{len(todo) * per_seed / 2**30:.1f} GiB, over the bound of {budget / 2**30:.1f} GiB; "
        f"training {size} seed(s) at a time")
    return [todo[a:a + size] for a in range(0, len(todo), size)]


def _caches(setting, stack: Stack, images, k: int) -> bool:
    """Whether layer ``k`` of ``stack`` trains on cached inputs: as :func:`caches_inputs`
    says, and never for images that stream (their inputs would be the whole set in memory)."""
    return not isinstance(images, driver.Source) and caches_inputs(
        setting, stack.specs, stack.pools, images.shape[1], k)


def cache_budget() -> int:
    """Bytes that the cached layer inputs of stacks trained together may take:
    :data:`CACHE_SHARE` of the first device's memory where it reports its size (GPUs, TPUs),
    else :data:`CACHE_BYTES_HOST`."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit * CACHE_SHARE) if limit else CACHE_BYTES_HOST


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


def _prefixed(log: Callable[[str], None], seed_index: int) -> Callable[[str], None]:
    return lambda message: log(f"stack of seed {seed_index}, {message}")


def _layer_records(k: int, evals: list[dict], settings: str) -> list[dict]:
    """The metrics.jsonl records of layer k, each with the digest of the pretrain settings
    that made it (:func:`scae.workdir.settings_digest`)."""
    return [{"layer": k, "epoch": e["epoch"], "step": e["step"], "train_mse": e["train_loss"],
             "val_mse": e["val_mse"], "time_s": e["time_s"], "img_per_s": e["img_per_s"],
             **({"seeds_together": e["seeds_together"]} if "seeds_together" in e else {}),
             **{key: e[key] for key in CODE_KEYS if key in e},
             "settings": settings} for e in evals]


def _train_layer(config, stacks: list[Stack], k: int, images, val_images, keys: list[Array],
                 seeds: list[int], workdir: Path, done: list[list[dict]], settings: list[str],
                 log) -> list[list[dict]]:
    """Trains CAE layer k of ``stacks`` (those of compare seeds ``seeds``) together, each in
    place on the features of its own layers 1..k-1; writes each seed's finished layer and
    records (after ``done``, its records so far). Returns each seed's records of layer k."""
    pc = config.pretrain
    n = len(seeds)
    spec = stacks[0].layers[k - 1].spec
    num = images.shape[0]
    p = driver.plan(num, pc.batch_size, pc.epochs[k - 1])
    phase_dir = (ckpt_dir(workdir, k, seeds[0]) if n == 1 else
                 workdir / "pretrain" / SEEDS_CKPT / f"layer{k}_s{'-'.join(map(str, seeds))}")
    stacked = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    key_init, key_order, key_noise = (jnp.stack(x) for x in
                                      zip(*(_layer_keys(key, k) for key in keys)))
    fresh = [_fresh_layer(spec, key) for key in key_init]
    graphdef, params = fresh[0][0], stacked([q for _, q in fresh])
    graphdef_stack, _ = models.split(stacks[0])
    encode = lambda below, x: models.merge(graphdef_stack, below).features(x, k - 1)
    # Each seed's own frozen layers (the whole stack's parameters; layers k.. go unused).
    below = parallel.replicate(stacked([models.split(s)[1] for s in stacks])) if k > 1 \
        else None
    batching = config.compare.get("seed_batching", "auto")
    # Images evaluated or encoded at once over the seeds a program holds at once, as one
    # seed's EVAL_BATCH.
    batch = driver.per_seed_batch(EVAL_BATCH, n, batching)
    pool = jnp.broadcast_to(jnp.arange(num), (n, num))
    context = below
    if k > 1 and _caches(pc.cache_features, stacks[0], images, k):
        # Every seed's inputs once, one after another along the example axis; seed m's pool
        # is its own stretch, so its batches are what it would draw from its own copy.
        with accounting.part("layer inputs"):
            inputs = jax.block_until_ready(driver.seed_map(encode, below, images, batch,
                                                           batching))
        data, pool = driver.seed_stretches(inputs, pool)
        data = parallel.replicate(data)
        context = None
    else:
        data = images
    parallel.check_batch(pc.batch_size, "pretrain.batch_size")

    def loss_fn(q, x, step_key, lower=None):
        h = x if lower is None else encode(lower, x)
        return models.merge(graphdef, q).loss(h, step_key)

    def seed_val_mse(q, lower, x):
        cae = models.merge(graphdef, q)

        def errors(v):
            h = v if lower is None else encode(lower, v)
            return jnp.mean(jnp.square(cae.reconstruct(h) - h), axis=(1, 2, 3))

        return jnp.mean(driver.batched_apply(errors, x, min(batch, x.shape[0])))

    # The images are an argument, not a closed-over constant: XLA would fold a constant into
    # the program (seconds of compilation, and a copy held by the executable).
    val_mse = jax.jit(driver.over_seeds(seed_val_mse, (0, 0, None), batching))
    together = _seed_list(seeds)
    data_shape = (num,) + data.shape[1:]
    log(f"layer {k}: {_describe(spec, data_shape, p)}" if n == 1 else
        f"layer {k}, stacks of seeds {together} together: {_describe(spec, data_shape, p)}")

    code = provenance.git_state()

    def evaluate(state, epoch):
        errs = np.asarray(val_mse(state["params"], below, val_images))
        return state, {"val_mse": [float(e) for e in errs], **code}

    def on_eval(record):
        e = record["evals"][-1]
        if n == 1:
            log(f"layer {k} epoch {e['epoch']}: train mse {e['train_loss']:.5f}, val mse "
                f"{e['val_mse'][0]:.5f}, {e['img_per_s']:.0f} img/s")
        else:
            log(f"layer {k} epoch {e['epoch']}, seeds {together}: train mse "
                + ", ".join(f"{v:.5f}" for v in e["train_loss_per_seed"]) + "; val mse "
                + ", ".join(f"{v:.5f}" for v in e["val_mse"])
                + f"; {e['img_per_s']:.0f} img/s in all")
        for m, i in enumerate(seeds):
            layer_records = _layer_records(k, _seed_evals(record["evals"], m, n), settings[m])
            atomic.write_jsonl(pretrain_dir(workdir, i) / "metrics.jsonl",
                               done[m] + layer_records)
            last = layer_records[-1]
            writers[m].scalars(last["step"], {
                f"layer{k}/train_mse": last["train_mse"], f"layer{k}/val_mse": last["val_mse"],
                f"layer{k}/img_per_s": last["img_per_s"],
                f"layer{k}/learning_rate": record["evals"][-1]["learning_rate"]})

    phase = driver.Phase(
        name=f"layer {k}" if n == 1 else f"layer {k} x{n} seeds",
        where=f"layer {k}" if n == 1 else f"layer {k} of the stacks", ckpt_dir=phase_dir,
        plan=p, loss_fn=loss_fn,
        make_tx=lambda scale: optim.make(pc, p.total_steps, lr_scale=scale),
        learning_rate=lambda scale, step: optim.rate(pc, p.total_steps, scale, step),
        params=params,
        data=data, pool=pool, order_key=key_order, step_key=key_noise, seeds=tuple(seeds),
        seed_batching=batching, spread=config.compare.get("spread", "auto"), context=context,
        steps_per_call=pc.steps_per_call,
        checkpoint_every=pc.checkpoint_every_steps,
        checkpoint_seconds=pc.get("checkpoint_seconds", 0.0), evaluate=evaluate, on_eval=on_eval,
        lr_key="pretrain.learning_rate", retries=pc.get("divergence_retries", 0), log=log)
    writers = [events.for_config(config, pretrain_dir(workdir, i) / "events") for i in seeds]
    try:
        result = driver.train(phase)
    finally:
        for w in writers:
            w.close()
    state = jax.device_get({"params": result.state["params"],
                            "opt_state": result.state["opt_state"]})
    out = []
    for m, i in enumerate(seeds):
        own = jax.tree.map(lambda a: a[m:m + 1], state)  # a group of one, as the seed's own
        nnx.update(stacks[m].layers[k - 1], jax.tree.map(lambda a: a[0], own["params"]))
        evals = _seed_evals(result.record["evals"], m, n)
        if n > 1:
            driver.write_finished(
                ckpt_dir(workdir, k, i), p.total_steps, own,
                {"evals": [_as_group_of_one(e) for e in evals],
                 "time_s": result.record["time_s"], "finished": True,
                 "seeds_together": list(seeds)}, result.lr_scale)
        out.append(_layer_records(k, evals, settings[m]))
    if n > 1:
        shutil.rmtree(phase_dir, ignore_errors=True)
        retry.scale_file(phase_dir).unlink(missing_ok=True)
    return out


def _seed_evals(evals: list[dict], m: int, n: int) -> list[dict]:
    """The evaluations of the m-th of ``n`` seeds trained together, as that seed's records:
    its own train loss and val_mse, its share of the images per second, and (when it trained
    with others) ``seeds_together``. Evaluations already of one seed pass unchanged."""
    out = []
    for e in evals:
        if "train_loss_per_seed" not in e:  # a layer checkpointed before the single path
            out.append(e)
            continue
        own = {"epoch": e["epoch"], "step": e["step"], "train_loss": e["train_loss_per_seed"][m],
               "val_mse": e["val_mse"][m], "time_s": e["time_s"],
               "img_per_s": e["img_per_s"] / n, **{key: e[key] for key in CODE_KEYS if key in e}}
        if n > 1 or "seeds_together" in e:
            own["seeds_together"] = e.get("seeds_together", n)
        out.append(own)
    return out


def _as_group_of_one(e: dict) -> dict:
    """A seed's evaluation record (:func:`_seed_evals`) as a phase of that seed alone records
    it, so that every finished layer reads the same way."""
    return {**e, "train_loss_per_seed": [e["train_loss"]], "val_mse": [e["val_mse"]],
            "img_per_s": e["img_per_s"]}


def _finished_layer(layer: models.CAE, layer_dir: Path, total_steps: int) -> list[dict] | None:
    """The evaluations of the layer checkpointed in ``layer_dir`` when it holds all
    ``total_steps`` steps, its parameters put into ``layer``; None when it is not finished."""
    saved = driver.finished(layer_dir, total_steps)
    if saved is None:
        return None
    state, record = saved
    _restore_layer(layer, state["params"], layer_dir)
    return _seed_evals(record.get("evals", []), 0, 1)


def _layer_keys(key: Array, k: int) -> tuple[Array, Array, Array]:
    """(init, batch order, noise) keys of layer k of the stack seeded by ``key``."""
    return tuple(jax.random.split(jax.random.fold_in(key, k), 3))


def _fresh_layer(spec: models.CAESpec, key_init: Array) -> tuple[nnx.GraphDef, dict]:
    """The graph and initial parameters of a layer. They come from the layer's own key: a
    resumed or retrained layer k starts where an uninterrupted run starts, whatever happened
    to the layers below."""
    return models.split(models.CAE(spec, rngs=nnx.Rngs(key_init)))


def _describe(s: models.CAESpec, data_shape: Sequence[int], p: driver.Plan) -> str:
    """The log line of a layer about to train on data of ``data_shape`` (per seed)."""
    return (f"CAE {s.in_channels}->{s.maps} maps {s.kernel}x{s.kernel}, sparsity pool "
            f"{s.sparsity_pool}, noise {s.noise}:{s.noise_level}, decoder {s.decoder}; "
            f"{data_shape[0]} images of {tuple(data_shape[1:])}, {p.epochs} epochs of "
            f"{p.steps_per_epoch} steps")


def caches_inputs(setting: bool | str, specs: Sequence[models.CAESpec], pools: Sequence[int],
                  image_hw: int, k: int) -> bool:
    """Whether layer ``k`` (2..) trains on cached inputs (``pretrain.cache_features``): for
    'always' (or True, in configs recorded before 'auto'), not for 'never' (False); for 'auto'
    when re-encoding through layers 1..k-1 would cost more than :data:`REENCODE_SHARE` of
    layer k's training step (analytic FLOPs, per image).
    """
    if setting != "auto":
        return setting in ("always", True)
    h, encode = image_hw, 0
    for spec, pool in zip(specs[:k - 1], pools):
        out = h - spec.kernel + 1
        encode += flops.conv(1, out, spec.kernel, spec.in_channels, spec.maps)
        h = -(-out // pool)
    s = specs[k - 1]
    return encode > REENCODE_SHARE * flops.cae_step(h, s.in_channels, s.kernel, s.maps, 1)


def _restore_layer(layer: models.CAE, saved: dict, where: Path) -> None:
    """Puts the saved parameters of a layer checkpoint into ``layer``, checking shapes. A
    layer saved as a group of one seed has a leading seed axis of 1, which is dropped."""
    like = models.params_of(layer)
    try:
        params = {name: jnp.asarray(saved[name]) for name in like}
    except KeyError as e:
        raise InputError(f"{where}: the checkpoint lacks parameter {e}; the config's decoder "
                         f"differs from the one it was trained with") from None
    for name, v in params.items():
        if v.ndim == like[name].ndim + 1 and v.shape[0] == 1:
            v = params[name] = v[0]
        if v.shape != like[name].shape:
            raise InputError(f"{where}: parameter {name} has shape {v.shape}, expected "
                             f"{like[name].shape} from the config")
    nnx.update(layer, params)


def from_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
                 in_channels: int | None = None, transform: bool = False) -> Stack:
    """The finished stack of a pretrain workdir (every layer), from its checkpoints.

    With ``transform`` it carries the input transform it was trained behind, fitted again as
    :func:`scae.data.inputs.build` fits it (reading the training split where a statistic
    needs it), and takes raw images; without, it takes the network inputs the commands
    prepare (:class:`Stack`)."""
    workdir = Path(workdir)
    if config is None:
        config = workdir_lib.load_config(workdir)
    saved = []
    for k in range(1, config.pretrain.layers + 1):
        last = driver.latest(ckpt_dir(workdir, k))
        if last is None:
            raise InputError(f"{ckpt_dir(workdir, k)}: no checkpoint of layer {k}; run "
                             f"pipelines.pretrain on this workdir first")
        if last[2].get("finished") is False:  # records from before the flag count as done
            raise InputError(f"{ckpt_dir(workdir, k)}: layer {k} is not finished; run "
                             f"pipelines.pretrain on this workdir to finish it")
        saved.append(last[1]["params"])
    if in_channels is None:  # the image channels it was trained on: layer 1's kernel says
        in_channels = int(np.shape(saved[0]["w"])[-2]) if saved else 1
    stack = Stack(layer_specs(config, in_channels), config.model.pool_sizes, rngs=nnx.Rngs(0))
    for k, (layer, params) in enumerate(zip(stack.layers, saved), start=1):
        _restore_layer(layer, params, ckpt_dir(workdir, k))
    if transform:
        stack.normalizer = read_transform(workdir)
        if stack.normalizer is None:
            if _trained_on_arrays(workdir):
                raise InputError(f"{workdir}: its stack was trained on arrays given to "
                                 f"scae.pretrain, and the workdir records no input transform "
                                 f"({TRANSFORM_JSON}); rerun scae.pretrain on it with the "
                                 f"same images to record one")
            stack.normalizer = inputs_lib.fit_transform(config.data)
    return stack


# The input transform a workdir's stack was trained behind, beside its layers: the stack's
# images are not always at a source the config names (the API trains on arrays), and a
# transform fitted again from the source would be another one.
TRANSFORM_JSON = "transform.json"
TRANSFORM_NPZ = "transform.npz"


def write_transform(workdir: str | os.PathLike, normalizer: preprocess.Normalizer) -> None:
    """Records ``normalizer`` as the input transform of ``workdir``'s stack (bit-exact:
    :meth:`scae.data.preprocess.Normalizer.state`), for :func:`from_workdir`."""
    folder = Path(workdir) / "pretrain"
    fields, arrays = normalizer.state()
    with atomic.replacing(folder / TRANSFORM_NPZ) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    # Written last: the fields say the record is whole.
    atomic.write_text(folder / TRANSFORM_JSON, json.dumps(fields, indent=1) + "\n")


def read_transform(workdir: str | os.PathLike) -> preprocess.Normalizer | None:
    """The input transform recorded by :func:`write_transform`, or None when there is none."""
    folder = Path(workdir) / "pretrain"
    if not (folder / TRANSFORM_JSON).exists():
        return None
    try:
        fields = json.loads((folder / TRANSFORM_JSON).read_text())
        with np.load(folder / TRANSFORM_NPZ) as f:
            arrays = {k: f[k] for k in f.files}
        return preprocess.Normalizer.from_state(fields, arrays)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / TRANSFORM_JSON}: unreadable input transform "
                         f"({' '.join(str(e).split())}); rerun the pretraining on that "
                         f"workdir to write it again") from None


def _trained_on_arrays(workdir: Path) -> bool:
    """Whether ``workdir``'s stack was trained by the API on arrays (its settings name the
    data "the images", not a source)."""
    record = atomic.read_json(workdir / "pretrain" / workdir_lib.SETTINGS_FILE)
    data = record.get("data") if isinstance(record, dict) else None
    return isinstance(data, dict) and data.get("name") == API_DATA_NAME


# What the API's workdir records name the data it was given (scae.api).
API_DATA_NAME = "the images"


def validation_mse(stack: Stack, images: Array | np.ndarray,
                   batch_size: int = EVAL_BATCH) -> list[float]:
    """Each layer's reconstruction MSE of its own input (the features of the layers below) on
    ``images``, network inputs as pretraining saw them: what ``metrics.jsonl`` records as a
    layer's ``val_mse`` after its last epoch, for a stack read back later."""
    graphdef, params = models.split(stack)
    out = []
    for k in range(1, stack.depth + 1):

        def errors(q, x, k=k):
            s = models.merge(graphdef, q)
            h = s.features(x, k - 1)
            return jnp.mean(jnp.square(s.layers[k - 1].reconstruct(h) - h), axis=(1, 2, 3))

        fn = jax.jit(errors)
        out.append(float(np.mean(driver.map_batches(lambda x: fn(params, x), images,
                                                    batch_size))))
    return out
