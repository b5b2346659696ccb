"""Greedy layer-wise training of the CAE stack, resumable from orbax checkpoints.

Layer k trains on the max-pooled, subsampled hidden maps of the frozen layers 1..k-1. Each
layer has its own checkpoint folder ``pretrain/ckpt/layer<k>``; its last step holds the
finished layer, so a rerun skips it, and periodic steps let a killed layer resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from scae import atomic, cae, checkpoint, loop, ops, optim, parallel, retry
from scae.errors import InputError

Array = jax.Array
Params = dict[str, Array]

EVAL_BATCH = 500


def layer_specs(config, in_channels: int) -> list[cae.CAESpec]:
    """The CAE of each pretrained layer, from the config's ``model`` and ``pretrain``."""
    m, p = config.model, config.pretrain
    specs, c = [], in_channels
    for k in range(p.layers):
        specs.append(cae.CAESpec(
            in_channels=c, maps=m.features[k], kernel=m.kernel_sizes[k],
            sparsity_pool=p.sparsity_pool[k], activation=m.activation, decoder=p.decoder,
            noise=p.noise, noise_level=p.noise_level, init=m.init,
            conv_impl=m.get("conv_impl", "auto")))
        c = m.features[k]
    return specs


def layer_input(specs: Sequence[cae.CAESpec], pools: Sequence[int], params: Sequence[Params],
                x: Array) -> Array:
    """The input of layer ``len(params)``: x through the given frozen layers, each encoded and
    max-pooled with subsampling (the CNN's pooling)."""
    for spec, p, pool in zip(specs, params, pools):
        x = ops.max_pool(cae.encode(spec, p, x), pool)
    return x


def decode_to_image(specs: Sequence[cae.CAESpec], pools: Sequence[int],
                    params: Sequence[Params], x: Array) -> Array:
    """Reconstructs images ``x`` through the top layer of ``params`` and back down the stack.

    The top CAE reconstructs its input; each layer below then unpools it at the switches of
    its own forward pass and decodes it with its (tied) decoder, back to image space.
    """
    hiddens, h = [], x
    for spec, p, pool in zip(specs[:-1], params[:-1], pools):
        hid = cae.encode(spec, p, h)
        hiddens.append(hid)
        h = ops.max_pool(hid, pool)
    y = cae.reconstruct(specs[len(params) - 1], params[-1], h)
    for spec, p, pool, hid in reversed(list(zip(specs, params, pools, hiddens))):
        y = cae.decode(spec, p, ops.unpool(y, hid, pool))
    return y


def _ckpt_dir(workdir: Path, k: int) -> Path:
    return workdir / "pretrain" / "ckpt" / f"layer{k}"


class LayerTrainer:
    """Trains CAE layer k of the stack; see :func:`pretrain`."""

    def __init__(self, config, specs, k: int, lower: Sequence[Params], images: Array,
                 val_images: Array, key: Array, lr_scale: float = 1.0):
        self.config, self.spec, self.k = config, specs[k - 1], k
        pc = config.pretrain
        pools = tuple(config.model.pool_sizes)
        feats = jax.jit(lambda x: layer_input(specs, pools, lower, x))
        self.val = loop.batched_apply(feats, val_images, EVAL_BATCH) if k > 1 else val_images
        if pc.cache_features or k == 1:
            # Frozen features once, instead of re-encoding every batch on every step.
            self.data = jax.jit(lambda x: loop.batched_apply(feats, x, EVAL_BATCH))(images)
            encode_batch = lambda x: x
        else:
            self.data = images
            encode_batch = feats
        parallel.check_batch(pc.batch_size, "pretrain.batch_size")
        self.plan = loop.plan(images.shape[0], pc.batch_size, pc.epochs[k - 1])
        self.tx = optim.make(pc, self.plan.total_steps, lr_scale=lr_scale)
        layer_key = jax.random.fold_in(key, k)
        self.key_init, self.key_order, self.key_noise = jax.random.split(layer_key, 3)
        spec = self.spec
        loss_fn = lambda params, x, key: cae.loss(spec, params, encode_batch(x), key)
        self._steps = {}  # compiled step functions by scan length
        self._loss_fn = loss_fn
        self.val_mse = jax.jit(lambda params: jnp.mean(loop.batched_apply(
            lambda x: jnp.mean(jnp.square(cae.reconstruct(spec, params, x) - x), axis=(1, 2, 3)),
            self.val, min(EVAL_BATCH, self.val.shape[0]))))

    def init_state(self) -> dict:
        params = cae.init(self.spec, self.key_init)
        return {"params": params, "opt_state": self.tx.init(params)}

    def steps(self, n: int) -> Callable:
        if n not in self._steps:
            self._steps[n] = loop.make_steps(self._loss_fn, self.tx, self.plan.batch_size, n)
        return self._steps[n]


def pretrain(config, images: Array, val_images: Array, workdir: str | os.PathLike,
             log: Callable[[str], None] = print) -> list[Params]:
    """Trains (or resumes) every layer of the stack; returns their parameters.

    ``images`` are the unlabelled pretraining images and ``val_images`` the held-out ones for
    the validation reconstruction error, both preprocessed float32 NHWC.
    Writes ``pretrain/metrics.jsonl`` and the per-layer checkpoints in ``workdir``.
    """
    workdir = Path(workdir)
    (workdir / "pretrain").mkdir(parents=True, exist_ok=True)
    specs = layer_specs(config, images.shape[-1])
    key = jax.random.PRNGKey(config.seed)
    val_images = val_images[: config.pretrain.eval_size]
    images, val_images = parallel.replicate((images, val_images))
    stack: list[Params] = []
    records: list[dict] = []
    for k in range(1, len(specs) + 1):
        params, layer_records = _train_layer_retrying(config, specs, k, stack, images,
                                                      val_images, key, workdir, records, log)
        stack.append(params)
        records.extend(layer_records)
    atomic.write_jsonl(workdir / "pretrain" / "metrics.jsonl", records)
    return stack


def _train_layer_retrying(config, specs, k, lower, images, val_images, key, workdir,
                          done_records, log):
    """:func:`_train_layer` under :func:`retry.halving_lr` with
    ``pretrain.divergence_retries``."""
    train = lambda scale: _train_layer(config, specs, k, lower, images, val_images, key,
                                       workdir, done_records, log, lr_scale=scale)
    return retry.halving_lr(train, retry.scale_file(_ckpt_dir(workdir, k)),
                            config.pretrain.get("divergence_retries", 0), log)


def _train_layer(config, specs, k, lower, images, val_images, key, workdir, done_records, log,
                 lr_scale: float = 1.0):
    pc = config.pretrain
    ckpts = checkpoint.Checkpoints(_ckpt_dir(workdir, k))
    latest = ckpts.latest_step()
    total = loop.plan(images.shape[0], pc.batch_size, pc.epochs[k - 1]).total_steps
    if latest is not None and latest >= total:
        log(f"layer {k}: finished earlier ({latest} steps), kept")
        params, record = _restore_params(ckpts, latest, cae.init(specs[k - 1], key))
        ckpts.close()
        return params, record["layer_records"]
    tr = LayerTrainer(config, specs, k, lower, images, val_images, key, lr_scale)
    state = tr.init_state()
    step, record = 0, {"layer_records": [], "epoch_loss_sum": 0.0, "epoch_time": 0.0}
    if latest is not None:
        state, record = ckpts.restore(latest, state)
        step = latest
        log(f"layer {k}: resuming at step {step}/{tr.plan.total_steps}")
    state = parallel.replicate(state)
    spec = tr.spec
    log(f"layer {k}: CAE {spec.in_channels}->{spec.maps} maps {spec.kernel}x{spec.kernel}, "
        f"sparsity pool {spec.sparsity_pool}, noise {spec.noise}:{spec.noise_level}, "
        f"decoder {spec.decoder}; {tr.data.shape[0]} images of {tuple(tr.data.shape[1:])}, "
        f"{tr.plan.epochs} epochs of {tr.plan.steps_per_epoch} steps")
    bar = tqdm(total=tr.plan.total_steps, initial=step, desc=f"layer {k}", unit="step",
               dynamic_ncols=True, leave=True)
    last_ckpt = step
    pool_idx = jnp.arange(tr.data.shape[0])
    order_fn = jax.jit(loop.epoch_order)
    for epoch, offset, n in tr.plan.chunks(step, pc.steps_per_call):
        t0 = time.perf_counter()
        order = order_fn(tr.key_order, pool_idx, epoch)
        params, opt_state, losses = tr.steps(n)(state["params"], state["opt_state"], tr.data,
                                                order, offset, step, tr.key_noise)
        losses = np.asarray(losses)
        state = {"params": params, "opt_state": opt_state}
        step += n
        record["epoch_loss_sum"] += float(losses.sum())
        record["epoch_time"] += time.perf_counter() - t0
        bar.update(n)
        bar.set_postfix(loss=f"{losses.mean():.5f}")
        finite = np.isfinite(losses)
        if not finite.all() or not loop.all_finite(state["params"]):
            bar.close()
            bad = int(np.argmax(~finite)) if not finite.all() else n - 1
            raise FloatingPointError(
                f"layer {k}: the loss or parameters became non-finite (loss {losses[bad]}) in "
                f"epoch {epoch + 1} by step "
                f"{step - n + bad + 1}; the last good checkpoint (step {last_ckpt}) is kept; "
                f"lower config.pretrain.learning_rate and rerun to resume from it")
        epoch_done = (offset + n) == tr.plan.steps_per_epoch
        if epoch_done:
            spe = tr.plan.steps_per_epoch
            rec = {"layer": k, "epoch": epoch + 1, "step": step,
                   "train_mse": record["epoch_loss_sum"] / spe,
                   "val_mse": float(tr.val_mse(state["params"])),
                   "time_s": record["epoch_time"],
                   "img_per_s": spe * tr.plan.batch_size / max(record["epoch_time"], 1e-9)}
            record["layer_records"].append(rec)
            record["epoch_loss_sum"], record["epoch_time"] = 0.0, 0.0
            log(f"layer {k} epoch {epoch + 1}: train mse {rec['train_mse']:.5f}, "
                f"val mse {rec['val_mse']:.5f}, {rec['img_per_s']:.0f} img/s")
        if epoch_done or step - last_ckpt >= pc.checkpoint_every_steps:
            ckpts.save(step, state, record)
            last_ckpt = step
            if epoch_done:
                atomic.write_jsonl(workdir / "pretrain" / "metrics.jsonl",
                                   list(done_records) + record["layer_records"])
    bar.close()
    ckpts.close()
    return jax.device_get(state["params"]), record["layer_records"]


def load(config, workdir: str | os.PathLike, in_channels: int) -> list[Params]:
    """The finished stack of a pretrain workdir (every layer), for transfer and plots."""
    workdir = Path(workdir)
    specs = layer_specs(config, in_channels)
    stack = []
    for k, spec in enumerate(specs, start=1):
        ckpts = checkpoint.Checkpoints(_ckpt_dir(workdir, k))
        step = ckpts.latest_step()
        like = cae.init(spec, jax.random.PRNGKey(0))
        if step is None:
            raise InputError(f"{_ckpt_dir(workdir, k)}: no checkpoint of layer {k}; "
                             f"run pipelines.pretrain on this workdir first")
        restored, _ = _restore_params(ckpts, step, like)
        stack.append(restored)
        ckpts.close()
    return stack


def _restore_params(ckpts, step, like_params):
    """Restores the params of a layer checkpoint without knowing its optimiser's state."""
    state, record = ckpts.restore_raw(step)
    params = {name: jnp.asarray(state["params"][name]) for name in like_params}
    for name, v in params.items():
        if v.shape != like_params[name].shape:
            raise InputError(f"layer checkpoint {name}: shape {v.shape}, expected "
                             f"{like_params[name].shape} from the config")
    return params, record


def project_filters(params: Sequence[Params], pools: Sequence[int], k: int) -> Array:
    """Pixel-space pictures of layer ``k``'s filters, (maps, H, W, image channels).

    A deeper filter lives on the pooled maps of the layer below, which no one can read. It is
    projected down linearly: each pooled unit is spread over its pooling window (nearest
    upsampling) and passed through the lower layer's tied decoder, down to the image. This
    ignores the activations (near-linear around 0), so it shows what a filter prefers, not an
    exact preimage.
    """
    f = jnp.moveaxis(params[k - 1]["w"], 3, 0)  # each filter as a (kh, kw, c_in) map
    for j in reversed(range(k - 1)):
        p = pools[j]
        f = ops.upsample_nearest(f, p, (f.shape[1] * p, f.shape[2] * p))
        f = ops.conv_full_tied(f, params[j]["w"])
    return f
