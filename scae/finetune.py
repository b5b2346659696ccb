"""Fine-tuning the CNN for one cell of the comparison (a label size and an arm), every seed at
once under ``jax.vmap``, resumable from checkpoints.

Arms: ``random`` (everything from random initialisation), ``pretrained`` (conv layers from the
CAE stack, everything fine-tuned) and ``frozen`` (conv layers from the stack, kept fixed by an
optax mask: a probe). For a given seed every arm sees the same labelled subset, the same head
initialisation, the same batch order, optimiser, schedule and number of steps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from scae import checkpoint, cnn, inputs as inputs_lib, loop, optim, parallel, transfer

Array = jax.Array
EVAL_BATCH = 500


def seed_keys(root_seed: int, seed: int) -> tuple[Array, Array]:
    """(init key, batch-order key) of a seed: shared by every arm, as fairness requires."""
    return tuple(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(root_seed), seed)))


def subset_digest(indices: np.ndarray) -> str:
    """A short fingerprint of a labelled subset, kept in the run records for audits."""
    return hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()[:12]


def eval_epochs(num_epochs: int, evals: int) -> list[int]:
    """The epochs (1-based) after which the validation error is measured, evenly spread and
    always including the last."""
    evals = min(evals, num_epochs)
    return sorted({int(round(e)) for e in np.linspace(num_epochs / evals, num_epochs, evals)})


def error_fn(model_cfg) -> Callable:
    """``errors(params, images, labels) -> percent misclassified``, batched to bound memory."""

    def errors(params, images, labels):
        logits = loop.batched_apply(lambda x: cnn.apply(model_cfg, params, x), images,
                                    min(EVAL_BATCH, images.shape[0]))
        return 100.0 * jnp.mean(jnp.argmax(logits, -1) != labels)

    return errors


@jax.jit
def keep_best(state: dict, errs: Array, epoch: int) -> dict:
    """Per seed, takes the current parameters as the best if their validation error is lower."""
    better = errs < state["best_val"]
    pick = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return dict(state, best=jax.tree.map(pick, state["params"], state["best"]),
                best_val=jnp.where(better, errs, state["best_val"]),
                best_epoch=jnp.where(better, epoch, state["best_epoch"]))


def initial_params(config, image_shape, stack, arm: str, seed: int,
                   log: Callable[[str], None] = print) -> dict:
    """The CNN of ``arm`` for ``seed``: random, or with conv k from CAE layer k."""
    params = cnn.init(config.model, image_shape, seed_keys(config.seed, seed)[0])
    if arm in ("pretrained", "frozen"):
        params = transfer.load_stack(params, stack, log=log)
    return params


def run_cell(config, data: inputs_lib.Inputs, stack: Sequence[dict] | None, label_size: int,
             arm: str, seeds: Sequence[int], ckpt_dir: Path,
             log: Callable[[str], None] = print,
             lr_scale: float = 1.0) -> tuple[list[dict], dict]:
    """Trains ``arm`` at ``label_size`` for ``seeds`` together.

    Returns one record per seed and the selected parameters (leading seed axis). Each record:
    label_size, arm, seed, epochs, steps, best_epoch, val_error, test_error (percent; the
    test error of the parameters with the lowest validation error), time_s, the labelled
    subset's fingerprint, the validation curve and ``lr_scale`` (the factor on
    ``finetune.learning_rate``; below 1 after divergence retries). Checkpoints after every
    evaluation in ``ckpt_dir``.
    """
    fc = config.finetune
    subsets = np.stack([inputs_lib.labelled(data, label_size, s) for s in seeds])
    plan = loop.plan(label_size, fc.batch_size, fc.epochs, fc.min_steps)
    parallel.check_batch(plan.batch_size, "finetune.batch_size")
    quiet = lambda _: None
    params = [initial_params(config, data.image_shape, stack, arm, s, log if i == 0 else quiet)
              for i, s in enumerate(seeds)]
    params = jax.tree.map(lambda *p: jnp.stack(p), *params)
    mask = cnn.conv_mask(jax.tree.map(lambda x: x[0], params), trainable=arm != "frozen")
    tx = optim.make(fc, plan.total_steps, mask, lr_scale=lr_scale)
    opt_state = jax.vmap(tx.init)(params)
    order_keys = jnp.stack([seed_keys(config.seed, s)[1] for s in seeds])
    noise_keys = order_keys  # the CNN's loss draws no noise; any key will do
    n = len(seeds)
    # "best" must not alias "params", whose buffers the step function donates.
    state = {"params": params, "opt_state": opt_state, "best": jax.tree.map(jnp.copy, params),
             "best_val": jnp.full((n,), jnp.inf), "best_epoch": jnp.zeros((n,), jnp.int32)}
    record = {"curve": [[] for _ in seeds], "time_s": 0.0}
    ckpts = checkpoint.Checkpoints(ckpt_dir)
    step = ckpts.latest_step() or 0
    if step:
        state, record = ckpts.restore(step, state)
        log(f"{arm} at {label_size} labels: resuming at step {step}/{plan.total_steps}")
    state = parallel.replicate(state)

    model_cfg = config.model
    images = parallel.replicate(data.train_images)
    labels = parallel.replicate(jnp.asarray(data.train_labels))
    loss_fn = lambda p, batch, key: cnn.loss(model_cfg, p, batch[0], batch[1])
    errors = error_fn(model_cfg)
    val_err = jax.jit(jax.vmap(errors, in_axes=(0, None, None)))
    val_x, val_y = data.val_images, jnp.asarray(data.val_labels)
    orders = jax.jit(jax.vmap(loop.epoch_order, in_axes=(0, 0, None)))
    subsets_d = jnp.asarray(subsets)
    compiled: dict[int, Callable] = {}
    evals = set(eval_epochs(plan.epochs, fc.evals))

    bar = tqdm(total=plan.total_steps, initial=step, unit="step", dynamic_ncols=True,
               desc=f"{arm} {label_size} labels x{n} seeds")
    for epoch, offset, k in plan.chunks(step, fc.steps_per_call):
        t0 = time.perf_counter()
        if k not in compiled:
            compiled[k] = loop.make_steps(loss_fn, tx, plan.batch_size, k, seeds=True)
        order = orders(order_keys, subsets_d, epoch)
        p, o, losses = compiled[k](state["params"], state["opt_state"], (images, labels), order,
                                   offset, step, noise_keys)
        state = dict(state, params=p, opt_state=o)
        step += k
        losses = np.asarray(losses)
        bar.update(k)
        bar.set_postfix(loss=f"{losses.mean():.4f}")
        if not np.all(np.isfinite(losses)) or not loop.all_finite(state["params"]):
            bar.close()
            nonfinite = np.argwhere(~np.isfinite(losses))
            seed_i, bad = nonfinite[0] if len(nonfinite) else (0, k - 1)
            raise FloatingPointError(
                f"{arm} run at {label_size} labels, seed {seeds[seed_i]}: the loss or parameters "
                f"became non-finite (loss {losses[seed_i, bad]}) in epoch {epoch + 1} by step "
                f"{step - k + bad + 1}; the "
                f"last good checkpoint is kept; lower config.finetune.learning_rate and rerun")
        if offset + k == plan.steps_per_epoch and (epoch + 1) in evals:
            errs = val_err(state["params"], val_x, val_y)
            state = keep_best(state, errs, epoch + 1)
            for i, e in enumerate(np.asarray(errs)):
                record["curve"][i].append([epoch + 1, float(e)])
            record["time_s"] += time.perf_counter() - t0
            ckpts.save(step, state, record)
        else:
            record["time_s"] += time.perf_counter() - t0
    bar.close()
    ckpts.close()

    test_err = np.asarray(val_err(state["best"], data.test_images, jnp.asarray(data.test_labels)))
    return [{"label_size": label_size, "arm": arm, "seed": int(s), "epochs": plan.epochs,
             "steps": plan.total_steps, "best_epoch": int(state["best_epoch"][i]),
             "val_error": float(state["best_val"][i]), "test_error": float(test_err[i]),
             "time_s": record["time_s"] / n, "subset": subset_digest(subsets[i]),
             "lr_scale": lr_scale, "curve": record["curve"][i]}
            for i, s in enumerate(seeds)], jax.tree.map(lambda x: np.asarray(x), state["best"])
