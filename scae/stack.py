"""The CAE stack: the :class:`Stack` value and its greedy layer-wise pretraining.

Layer k trains on the max-pooled, subsampled hidden maps of the frozen layers 1..k-1 (the
CNN's pooling). Each layer is one :class:`scae.driver.Phase` with its own checkpoint folder
``pretrain/ckpt/layer<k>``; its last step holds the finished layer, so a rerun skips it, and
periodic steps let a killed layer resume. :func:`pretrain` trains one stack;
:func:`pretrain_seeds` trains the stacks of several compare seeds together, layer k of all of
them as one phase vmapped over the seeds, into the same per-seed folders.
"""

from __future__ import annotations

import dataclasses
import functools
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
import orbax.checkpoint as ocp
from flax import nnx

from scae import atomic, checkpoint, driver, flops, models, ops, optim, parallel, preprocess, retry
from scae import workdir as workdir_lib
from scae.errors import InputError, is_device_oom

Array = jax.Array
EVAL_BATCH = 256  # images per evaluation batch: bounds the activations held at once
# pretrain.cache_features='auto' re-encodes a layer's inputs on every step when the frozen
# layers below cost at most this share of the layer's own training step.
REENCODE_SHARE = 0.05
# Stacks trained together (pretrain_seeds) cache their layer inputs for every seed of a
# group: the groups are sized so that the caches take at most this share of the device's
# memory, or CACHE_BYTES_HOST where the device does not report its size (the CPU).
CACHE_SHARE = 0.25
CACHE_BYTES_HOST = 2 << 30
SEEDS_CKPT = "ckpt_seeds"  # pretrain/<this>/layer<k>_s<seeds>: a layer of several stacks


def layer_specs(config: ml_collections.ConfigDict, in_channels: int) -> list[models.CAESpec]:
    """The CAE of each pretrained layer, from the config's ``model`` and ``pretrain``."""
    m, p = config.model, config.pretrain
    specs, c = [], in_channels
    for k in range(p.layers):
        specs.append(models.CAESpec(
            in_channels=c, maps=m.features[k], kernel=m.kernel_sizes[k],
            sparsity_pool=p.sparsity_pool[k], activation=m.activation, decoder=p.decoder,
            noise=p.noise, noise_level=p.noise_level, init=m.init,
            conv_impl=m.get("conv_impl", "auto"),
            compute_dtype=m.get("compute_dtype", "float32"),
            decoder_output=p.get("decoder_output", "activation")))
        c = m.features[k]
    return specs


class Stack(nnx.Module):
    """A stack of CAE layers with the CNN's max-pooling (with subsampling) between them.

    ``layers[k-1]`` is CAE layer k (:class:`scae.models.CAE`); ``pools[k-1]`` the pooling after
    it. Encode images to any depth, reconstruct them, build the CNN with the stack's filters
    (:meth:`to_cnn`), save and load it. Images given to the methods are float32 NHWC as the
    stack was trained on (see :func:`scae.api.prepare` for uint8 images).
    """

    def __init__(self, specs: Sequence[models.CAESpec], pools: Sequence[int], *,
                 rngs: nnx.Rngs):
        if len(pools) < len(specs):
            raise InputError(f"stack: {len(specs)} layers need {len(specs)} pool sizes, got "
                             f"{len(pools)}")
        self.pools = tuple(int(p) for p in pools)
        self.layers = nnx.List([models.CAE(s, rngs=rngs) for s in specs])
        # How uint8 pixels become the stack's inputs (scae.api.prepare), when known.
        self.normalizer: preprocess.Normalizer | None = None

    @property
    def specs(self) -> list[models.CAESpec]:
        return [layer.spec for layer in self.layers]

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _check_depth(self, depth: int | None) -> int:
        depth = self.depth if depth is None else depth
        if not 0 <= depth <= self.depth:
            raise InputError(f"depth {depth}: the stack has layers 1..{self.depth}")
        return depth

    def features(self, x: Array, depth: int | None = None, pooled: bool = True) -> Array:
        """``x`` through layers 1..depth, each encoded and max-pooled (the last one only when
        ``pooled``): the input of CAE layer depth+1, or the CNN's conv features. Traceable."""
        depth = self._check_depth(depth)
        for k, (layer, pool) in enumerate(zip(self.layers[:depth], self.pools), start=1):
            x = layer.encode_pooled(x, pool) if pooled or k < depth else layer.encode(x)
        return x

    def decode_to_image(self, x: Array, depth: int | None = None) -> Array:
        """Reconstructs images ``x`` through CAE layer ``depth`` and back down the stack.

        The top CAE reconstructs its input; each layer below then unpools it at the switches
        of its own forward pass and decodes it with its decoder, back to image space.
        """
        depth = self._check_depth(depth)
        hiddens, h = [], x
        for layer, pool in zip(self.layers[:depth - 1], self.pools):
            hid = layer.encode(h)
            hiddens.append(hid)
            h = ops.max_pool(hid, pool)
        y = self.layers[depth - 1].reconstruct(h)
        for layer, pool, hid in reversed(list(zip(self.layers, self.pools, hiddens))):
            y = layer.decode(ops.unpool(y, hid, pool))
        return y

    def encode(self, images: np.ndarray | Array, depth: int | None = None, pooled: bool = True,
               batch_size: int = EVAL_BATCH) -> np.ndarray:
        """:meth:`features` of ``images`` computed batch by batch into host memory, so any
        number of images fits: float32 (N, H', W', maps of layer ``depth``)."""
        depth = self._check_depth(depth)
        self._check_input(images)
        graphdef, params = models.split(self)
        fn = jax.jit(lambda q, x: models.merge(graphdef, q).features(x, depth, pooled))
        return driver.map_batches(lambda x: fn(params, x), images, batch_size)

    def reconstruct(self, images: np.ndarray | Array, depth: int | None = None,
                    batch_size: int = EVAL_BATCH) -> np.ndarray:
        """:meth:`decode_to_image` of ``images``, batch by batch into host memory."""
        depth = self._check_depth(depth)
        self._check_input(images)
        graphdef, params = models.split(self)
        fn = jax.jit(lambda q, x: models.merge(graphdef, q).decode_to_image(x, depth))
        return driver.map_batches(lambda x: fn(params, x), images, batch_size)

    def _check_input(self, images) -> None:
        c = self.layers[0].spec.in_channels if self.depth else None
        if getattr(images, "ndim", 0) != 4 or (c is not None and images.shape[-1] != c):
            raise InputError(f"images of shape {tuple(getattr(images, 'shape', ()))}: the "
                             f"stack expects NHWC images with {c} channel(s)")

    def project_filters(self, k: int) -> np.ndarray:
        """Pixel-space pictures of layer ``k``'s filters, (maps, H, W, image channels).

        A deeper filter lives on the pooled maps of the layer below, which no one can read. It
        is projected down linearly: each pooled unit is spread over its pooling window (nearest
        upsampling) and passed through the lower layer's tied decoder, down to the image. This
        ignores the activations (near-linear around 0), so it shows what a filter prefers, not
        an exact preimage.
        """
        return np.asarray(_project(tuple(layer.w[...] for layer in self.layers[:k]),
                                   self.pools[:k - 1]))

    def to_cnn(self, spec: models.CNNSpec, *, rngs: nnx.Rngs,
               log: Callable[[str], None] = print) -> models.CNN:
        """A fresh :class:`scae.models.CNN` of ``spec`` whose conv k takes CAE layer k's
        encoder kernel and bias (model surgery on the state, as big_vision's
        ``merge_params``). A shape mismatch is an :class:`InputError`; the map and every
        parameter that keeps its fresh initialisation are logged."""
        cnn = models.CNN(spec, rngs=rngs)
        transfer(self, cnn, log)
        return cnn

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the stack to the folder ``path`` (orbax parameters and ``stack.json`` with
        the layer specs), replacing it whole: a kill leaves the old stack or the new one."""
        path = Path(path).absolute()
        tmp = path.with_name(f".{path.name}.saving")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", jax.device_get(models.params_of(self)))
        norm = self.normalizer
        atomic.write_text(tmp / "stack.json", json.dumps(
            {"pools": list(self.pools), "specs": [dataclasses.asdict(s) for s in self.specs],
             "normalizer": None if norm is None else {
                 "scale": norm.scale,
                 "mean": None if norm.mean is None else np.asarray(norm.mean).tolist(),
                 "std": None if norm.std is None else np.asarray(norm.std).tolist()}},
            indent=1))
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stack:
        """A stack written by :meth:`save`, or the finished stack of a pretrain workdir."""
        path = Path(path)
        if (path / "config.json").exists() and not (path / "stack.json").exists():
            return from_workdir(path)
        meta = path / "stack.json"
        if not meta.exists():
            raise InputError(f"{path}: not a saved stack (no stack.json) nor a pretrain workdir "
                             f"(no config.json)")
        try:
            info = json.loads(meta.read_text())
            specs = [models.CAESpec(**s) for s in info["specs"]]
            pools = info["pools"]
            norm = info.get("normalizer")
            normalizer = None if norm is None else preprocess.Normalizer(
                norm["scale"], *(None if norm[k] is None else np.asarray(norm[k], np.float32)
                                 for k in ("mean", "std")))
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{meta}: unreadable ({e})") from None
        stack = cls(specs, pools, rngs=nnx.Rngs(0))
        stack.normalizer = normalizer
        like = models.params_of(stack)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
        try:
            with ocp.StandardCheckpointer() as ckptr:
                params = ckptr.restore(path.absolute() / "params", abstract)
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a damaged folder
            raise InputError(f"{path / 'params'}: cannot read the saved parameters "
                             f"({type(e).__name__}); save the stack again") from None
        nnx.update(stack, params)
        return stack


def transfer(stack: Stack, cnn: models.CNN, log: Callable[[str], None] = print) -> None:
    """Copies CAE layer k's ``w`` and ``b`` into ``cnn``'s conv k, in place. The decoder
    biases ``c`` (and an untied ``w_dec``) have no counterpart in the CNN."""
    loaded = []
    for k, layer in enumerate(stack.layers, start=1):
        name = f"conv{k}"
        if name not in cnn.spec.conv_names:
            raise InputError(f"transfer: the CNN has no layer {name} for CAE layer {k}")
        conv = getattr(cnn, name)
        for p in ("w", "b"):
            src, dst = getattr(layer, p), getattr(conv, p)
            if src[...].shape != dst[...].shape:
                raise InputError(f"transfer: CAE layer {k} {p} has shape "
                                 f"{tuple(src[...].shape)}, CNN {name}.{p} expects "
                                 f"{tuple(dst[...].shape)}")
            dst[...] = jnp.asarray(src[...], dst[...].dtype)
            loaded.append(f"layer{k}.{p}->{name}.{p}")
    fresh = [".".join(str(k) for k in path) for path, _ in
             nnx.to_flat_state(nnx.state(cnn, nnx.Param))
             if f"{path[0]}.{path[-1]}" not in {m.split("->")[1] for m in loaded}]
    log(f"transfer: {', '.join(loaded) or 'nothing'}; fresh initialisation kept for "
        f"{', '.join(fresh) or 'nothing'}")


@functools.partial(jax.jit, static_argnums=1)
def _project(kernels: tuple[Array, ...], pools: tuple[int, ...]) -> Array:
    """:meth:`Stack.project_filters` of the last of ``kernels``: one program, where op by op
    each convolution's patch copies would compile on their own (seconds for layer 3)."""
    f = jnp.moveaxis(kernels[-1], 3, 0)  # each filter as a (kh, kw, c_in) map
    for j in reversed(range(len(kernels) - 1)):
        p = pools[j]
        f = ops.upsample_nearest(f, p, (f.shape[1] * p, f.shape[2] * p))
        f = ops.conv_full_tied(f, kernels[j])
    return f


# --- greedy layer-wise pretraining ---------------------------------------------------------


def pretrain_dir(workdir: str | os.PathLike, seed_index: int = 0) -> Path:
    """Where the stack of compare seed ``seed_index`` keeps its records and checkpoints:
    ``pretrain/`` for seed 0 (the stack every seed shares when stacks are not per seed),
    ``pretrain/seed<i>/`` for the others."""
    folder = Path(workdir) / "pretrain"
    return folder if seed_index == 0 else folder / f"seed{seed_index}"


def ckpt_dir(workdir: Path, k: int, seed_index: int = 0) -> Path:
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
    """Trains (or resumes) every layer of the stack; returns it.

    ``images`` are the unlabelled pretraining images and ``val_images`` the held-out ones for
    the validation reconstruction error, both preprocessed float32 NHWC. Writes
    ``metrics.jsonl`` and the per-layer checkpoints in :func:`pretrain_dir` of ``workdir``;
    ``seed_index`` i > 0 trains the stack of compare seed i (:func:`seed_config`).
    """
    workdir = Path(workdir)
    config = seed_config(config, seed_index)
    folder = pretrain_dir(workdir, seed_index)
    folder.mkdir(parents=True, exist_ok=True)
    specs = layer_specs(config, images.shape[-1])
    stack = Stack(specs, config.model.pool_sizes, rngs=nnx.Rngs(config.seed))
    key = jax.random.PRNGKey(config.seed)
    val_images = val_images[: config.pretrain.eval_size]
    images, val_images = parallel.replicate((images, val_images))
    records: list[dict] = []
    for k in range(1, len(specs) + 1):
        records += _train_layer(config, stack, k, images, val_images, key, folder, records,
                                log if seed_index == 0 else _prefixed(log, seed_index))
    atomic.write_jsonl(folder / "metrics.jsonl", records)
    return stack


def pretrain_seeds(config: ml_collections.ConfigDict, images: Array, val_images: Array,
                   workdir: str | os.PathLike, seed_indices: Sequence[int],
                   log: Callable[[str], None] = print) -> list[Stack]:
    """The stacks of compare seeds ``seed_indices``, trained together; one per seed, in that
    order.

    Each seed's stack is the one :func:`pretrain` trains with ``seed_index`` i (the same keys,
    data and checkpoints, equal up to float rounding), but layer k of every seed that still
    needs it is one :class:`scae.driver.Phase` over those seeds (``compare.seed_batching``:
    vmapped, or one after another in one program; :func:`scae.driver.over_seeds`), whose frozen
    layers below are each seed's own (passed to the loss as the phase's context). Finished
    per-seed layers, from an earlier run of either kind, are kept. The unfinished phase checkpoints
    in ``pretrain/ckpt_seeds/layer<k>_s<seeds>``, so a killed run resumes mid-layer; once done,
    each seed's layer is written as a normal checkpoint in ``pretrain_dir(workdir, i)/ckpt``,
    its records in that folder's ``metrics.jsonl`` (with ``seeds_together``; ``img_per_s`` is
    the seed's share), and the shared folder is removed.

    Memory: vmapped steps hold every seed's activations (mapped ones one seed's at a time), and
    cached layer inputs (``pretrain.cache_features``, decided per layer as for one seed) take
    seeds times the memory of one seed's. A layer that caches trains its seeds in groups whose
    caches fit in :func:`cache_budget` (a share of the device's memory), one seed at least; a
    layer that re-encodes trains all its seeds together. A group of one seed trains exactly as
    :func:`pretrain` trains it. On a device out-of-memory the stacks are trained one after
    another with :func:`pretrain`, which keeps the layers finished so far. A divergence retry
    (``pretrain.divergence_retries``) halves the learning rate of every seed of the phase.
    """
    seeds = list(dict.fromkeys(int(i) for i in seed_indices))
    if len(seeds) > 1:
        try:
            return _pretrain_together(config, images, val_images, Path(workdir), seeds, log)
        except Exception as e:  # noqa: BLE001 - only a device out-of-memory falls back
            if not is_device_oom(e):
                raise
        # Past the handler, so that its traceback no longer holds the failed phase's buffers.
        driver.release_freed_memory()
        log(f"the stacks of seeds {_seed_list(seeds)} do not fit in memory together; "
            f"training them one after another")
    return [pretrain(config, images, val_images, workdir, log, seed_index=i) for i in seeds]


def _pretrain_together(config, images, val_images, workdir: Path, seeds: list[int],
                       log) -> list[Stack]:
    """:func:`pretrain_seeds` for two seeds or more, without the out-of-memory fallback."""
    pc = config.pretrain
    configs = [seed_config(config, i) for i in seeds]
    settings = [workdir_lib.settings_digest(c, "pretrain") for c in configs]
    for i in seeds:
        pretrain_dir(workdir, i).mkdir(parents=True, exist_ok=True)
    specs = layer_specs(config, images.shape[-1])
    stacks = [Stack(specs, config.model.pool_sizes, rngs=nnx.Rngs(c.seed)) for c in configs]
    keys = [jax.random.PRNGKey(c.seed) for c in configs]
    val_images = val_images[: pc.eval_size]
    images, val_images = parallel.replicate((images, val_images))
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
            _prefixed(log, i)(f"layer {k}: finished earlier ({p.total_steps} steps), kept")
            records[j] += _layer_records(k, evals, settings[j])
        for group in _seed_groups(pc.cache_features, stacks[0], k, images, todo, log):
            if len(group) == 1:  # a seed alone trains as pretrain trains it
                j = group[0]
                records[j] += _train_layer(configs[j], stacks[j], k, images, val_images, keys[j],
                                           pretrain_dir(workdir, seeds[j]), records[j],
                                           _prefixed(log, seeds[j]))
                continue
            new = _train_layer_seeds(config, [stacks[j] for j in group], k, images,
                                     val_images, [keys[j] for j in group],
                                     [seeds[j] for j in group], workdir,
                                     [records[j] for j in group],
                                     [settings[j] for j in group], log)
            for j, r in zip(group, new):
                records[j] += r
    for i, r in zip(seeds, records):
        atomic.write_jsonl(pretrain_dir(workdir, i) / "metrics.jsonl", r)
    shutil.rmtree(workdir / "pretrain" / SEEDS_CKPT, ignore_errors=True)  # leftovers, if any
    return stacks


def _seed_groups(setting, stack: Stack, k: int, images: Array, todo: list[int],
                 log) -> list[list[int]]:
    """The groups in which layer k of the seeds ``todo`` (positions in the seed list) trains:
    one, unless the cached inputs of them all would exceed :func:`cache_budget`."""
    if len(todo) <= 1 or k == 1 or not caches_inputs(setting, stack.specs, stack.pools,
                                                      images.shape[1], k):
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
             "settings": settings} for e in evals]


def _train_layer(config, stack: Stack, k: int, images, val_images, key, folder: Path,
                 done: list[dict], log) -> list[dict]:
    """Trains CAE layer k of ``stack`` in place on the features of layers 1..k-1; its
    checkpoints and the metrics go into the pretrain ``folder``."""
    pc = config.pretrain
    layer = stack.layers[k - 1]
    settings = workdir_lib.settings_digest(config, "pretrain")
    p = driver.plan(images.shape[0], pc.batch_size, pc.epochs[k - 1])
    layer_dir = folder / "ckpt" / f"layer{k}"
    evals = _finished_layer(layer, layer_dir, p.total_steps)
    if evals is not None:
        log(f"layer {k}: finished earlier ({p.total_steps} steps), kept")
        return _layer_records(k, evals, settings)

    graphdef_below, below = models.split(stack)
    feats = jax.jit(lambda x: models.merge(graphdef_below, below).features(x, k - 1))
    val = driver.batched_apply(feats, val_images, EVAL_BATCH) if k > 1 else val_images
    if k > 1 and caches_inputs(pc.cache_features, stack.specs, stack.pools,
                               images.shape[1], k):
        # Frozen features once, instead of re-encoding every batch on every step.
        data = jax.jit(lambda x: driver.batched_apply(feats, x, EVAL_BATCH))(images)
        encode_batch = lambda x: x
    else:
        data, encode_batch = images, feats
    parallel.check_batch(pc.batch_size, "pretrain.batch_size")
    key_init, key_order, key_noise = _layer_keys(key, k)
    graphdef, params = _fresh_layer(layer.spec, key_init)
    loss_fn = lambda q, x, step_key: models.merge(graphdef, q).loss(encode_batch(x), step_key)
    eval_n = min(EVAL_BATCH, val.shape[0])
    # The images are an argument, not a closed-over constant: XLA would fold a constant
    # into the program (seconds of compilation, and a copy held by the executable).
    val_mse = jax.jit(lambda q, v: jnp.mean(driver.batched_apply(
        lambda x: jnp.mean(jnp.square(models.merge(graphdef, q).reconstruct(x) - x),
                           axis=(1, 2, 3)), v, eval_n)))
    log(f"layer {k}: {_describe(layer.spec, data.shape, p)}")

    def evaluate(state, epoch):
        rec = {"val_mse": float(val_mse(state["params"], val))}
        return state, rec

    def on_eval(record):
        e = record["evals"][-1]
        log(f"layer {k} epoch {e['epoch']}: train mse {e['train_loss']:.5f}, val mse "
            f"{e['val_mse']:.5f}, {e['img_per_s']:.0f} img/s")
        atomic.write_jsonl(folder / "metrics.jsonl",
                           list(done) + _layer_records(k, record["evals"], settings))

    phase = driver.Phase(
        name=f"layer {k}", ckpt_dir=layer_dir, plan=p, loss_fn=loss_fn,
        make_tx=lambda scale: optim.make(pc, p.total_steps, lr_scale=scale), params=params,
        data=data, pool=jnp.arange(data.shape[0]), order_key=key_order, step_key=key_noise,
        steps_per_call=pc.steps_per_call, checkpoint_every=pc.checkpoint_every_steps,
        evaluate=evaluate, on_eval=on_eval, lr_key="pretrain.learning_rate",
        retries=pc.get("divergence_retries", 0), log=log)
    result = driver.train(phase)
    nnx.update(layer, jax.device_get(result.state["params"]))
    return _layer_records(k, result.record["evals"], settings)


def _train_layer_seeds(config, stacks: list[Stack], k: int, images, val_images,
                       keys: list[Array], seeds: list[int], workdir: Path,
                       done: list[list[dict]], settings: list[str], log) -> list[list[dict]]:
    """Trains CAE layer k of ``stacks`` (those of compare seeds ``seeds``) together, each in
    place on the features of its own layers 1..k-1; writes each seed's finished layer and
    records (after ``done``, its records so far) as :func:`pretrain` does. Returns each seed's
    records of layer k."""
    pc = config.pretrain
    n = len(seeds)
    spec = stacks[0].layers[k - 1].spec
    num = images.shape[0]
    p = driver.plan(num, pc.batch_size, pc.epochs[k - 1])
    group_dir = workdir / "pretrain" / SEEDS_CKPT / f"layer{k}_s{'-'.join(map(str, seeds))}"
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
    if k > 1 and caches_inputs(pc.cache_features, stacks[0].specs, stacks[0].pools,
                               images.shape[1], k):
        # Every seed's inputs once, one after another along the example axis; seed m's pool
        # is its own stretch, so its batches are what its single-seed run draws.
        inputs = driver.seed_map(encode, below, images, batch, batching)
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

    val_mse = jax.jit(driver.over_seeds(seed_val_mse, (0, 0, None), batching))
    together = _seed_list(seeds)
    log(f"layer {k}, stacks of seeds {together} together: "
        f"{_describe(spec, (num,) + data.shape[1:], p)}")

    def evaluate(state, epoch):
        errs = np.asarray(val_mse(state["params"], below, val_images))
        return state, {"val_mse": [float(e) for e in errs]}

    def on_eval(record):
        e = record["evals"][-1]
        log(f"layer {k} epoch {e['epoch']}, seeds {together}: train mse "
            + ", ".join(f"{v:.5f}" for v in e["train_loss_per_seed"]) + "; val mse "
            + ", ".join(f"{v:.5f}" for v in e["val_mse"])
            + f"; {e['img_per_s']:.0f} img/s in all")
        for m, i in enumerate(seeds):
            layer_records = _layer_records(k, _seed_evals(record["evals"], m, n), settings[m])
            atomic.write_jsonl(pretrain_dir(workdir, i) / "metrics.jsonl",
                               done[m] + layer_records)

    phase = driver.Phase(
        name=f"layer {k} x{n} seeds", where=f"layer {k} of the stacks", ckpt_dir=group_dir,
        plan=p, loss_fn=loss_fn,
        make_tx=lambda scale: optim.make(pc, p.total_steps, lr_scale=scale), params=params,
        data=data, pool=pool, order_key=key_order, step_key=key_noise, seeds=tuple(seeds),
        seed_batching=batching, context=context, steps_per_call=pc.steps_per_call,
        checkpoint_every=pc.checkpoint_every_steps, evaluate=evaluate, on_eval=on_eval,
        lr_key="pretrain.learning_rate", retries=pc.get("divergence_retries", 0), log=log)
    result = driver.train(phase)
    state = jax.device_get({"params": result.state["params"],
                            "opt_state": result.state["opt_state"]})
    out = []
    for m, i in enumerate(seeds):
        own = jax.tree.map(lambda a: a[m], state)
        nnx.update(stacks[m].layers[k - 1], own["params"])
        evals = _seed_evals(result.record["evals"], m, n)
        _write_layer(ckpt_dir(workdir, k, i), p.total_steps, own,
                     {"evals": evals, "time_s": result.record["time_s"], "loss_sum": 0.0,
                      "loss_steps": 0, "eval_time": 0.0, "finished": True,
                      "seeds_together": list(seeds)}, result.lr_scale)
        out.append(_layer_records(k, evals, settings[m]))
    shutil.rmtree(group_dir, ignore_errors=True)
    retry.scale_file(group_dir).unlink(missing_ok=True)
    return out


def _seed_evals(evals: list[dict], m: int, n: int) -> list[dict]:
    """The evaluations of the m-th of ``n`` seeds trained together, as a one-seed phase
    records them (its own train loss and val_mse, its share of the images per second), with
    ``seeds_together``."""
    return [{"epoch": e["epoch"], "step": e["step"], "train_loss": e["train_loss_per_seed"][m],
             "val_mse": e["val_mse"][m], "time_s": e["time_s"], "img_per_s": e["img_per_s"] / n,
             "seeds_together": n} for e in evals]


def _write_layer(layer_dir: Path, step: int, state: dict, record: dict,
                 lr_scale: float) -> None:
    """Writes a finished layer as its own phase's last checkpoint, and the learning-rate scale
    it finished at as that phase would remember it."""
    ckpts = checkpoint.Checkpoints(layer_dir)
    try:
        ckpts.save(step, state, record)
    finally:
        ckpts.close()
    scale = retry.scale_file(layer_dir)
    if lr_scale != 1.0:
        atomic.write_text(scale, json.dumps({"lr_scale": lr_scale}))
    else:
        scale.unlink(missing_ok=True)


def _finished_layer(layer: models.CAE, layer_dir: Path, total_steps: int) -> list[dict] | None:
    """The evaluations of the layer checkpointed in ``layer_dir`` when it holds all
    ``total_steps`` steps, its parameters put into ``layer``; None when it is not finished."""
    saved = driver.finished(layer_dir, total_steps)
    if saved is None:
        return None
    state, record = saved
    _restore_layer(layer, state["params"], layer_dir)
    return record.get("evals", [])


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
    """Puts the saved parameters of a layer checkpoint into ``layer``, checking shapes."""
    like = models.params_of(layer)
    try:
        params = {name: jnp.asarray(saved[name]) for name in like}
    except KeyError as e:
        raise InputError(f"{where}: the checkpoint lacks parameter {e}; the config's decoder "
                         f"differs from the one it was trained with") from None
    for name, v in params.items():
        if v.shape != like[name].shape:
            raise InputError(f"{where}: parameter {name} has shape {v.shape}, expected "
                             f"{like[name].shape} from the config")
    nnx.update(layer, params)


def from_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
                 in_channels: int | None = None) -> Stack:
    """The finished stack of a pretrain workdir (every layer), from its checkpoints."""
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
        in_channels = int(np.shape(saved[0]["w"])[2]) if saved else 1
    stack = Stack(layer_specs(config, in_channels), config.model.pool_sizes, rngs=nnx.Rngs(0))
    for k, (layer, params) in enumerate(zip(stack.layers, saved), start=1):
        _restore_layer(layer, params, ckpt_dir(workdir, k))
    return stack
