"""Fine-tuning the CNN for one cell of the comparison (a label size and an arm), every seed in
one compiled program (:func:`scae.train.driver.over_seeds`), as one resumable
:class:`scae.train.driver.Phase`.

Arms: ``random`` (everything from random initialisation), ``pretrained`` (conv layers from the
CAE stack, everything fine-tuned) and ``frozen`` (conv layers from the stack, kept fixed by an
optax partition built from an nnx filter: a probe). For a given seed every arm sees the same
labelled subset, the same head initialisation, the same batch order, optimiser, schedule and
number of steps. The model reported is the one with the lowest validation error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scae import accounting
from scae import config as cfglib
from scae.config import ARMS
from scae.data import augment
from scae.data import inputs as inputs_lib
from scae.models import modules as models
from scae.models.stack import Stack
from scae.train import driver, events, optim

Array = jax.Array
# Images evaluated at once over the seeds a program holds at once (driver.seeds_at_once): a
# vmapped evaluation holds each seed's activations (conv2's patches dominate), and 128 take half
# the temporaries of 256 at the same speed (docs/performance.md).
EVAL_BATCH = 128
# The frozen arm trains on its conv features computed once (when no augmentation changes the
# images between steps) while they take at most this many bytes over all the seeds of a cell.
FROZEN_CACHE_BYTES = 2 << 30
# Training images per seed (the first of its labelled subset, not augmented) on which a run's
# saturated units are counted, at its start and at each evaluation.
PROBE_IMAGES = 256


def seed_keys(root_seed: int, seed: int) -> tuple[Array, Array, Array]:
    """(init key, batch-order key, per-step key for dropout and augmentation) of a seed:
    shared by every arm, as fairness requires."""
    return tuple(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(root_seed), seed), 3))


def subset_digest(indices: np.ndarray) -> str:
    """A short fingerprint of a labelled subset, kept in the run records for audits."""
    return hashlib.sha1(np.asarray(indices, np.int64).tobytes()).hexdigest()[:12]


def eval_epochs(num_epochs: int, evals: int) -> list[int]:
    """The epochs (1-based) after which the validation error is measured, evenly spread and
    always including the last."""
    evals = min(evals, num_epochs)
    return sorted({int(round(e)) for e in np.linspace(num_epochs / evals, num_epochs, evals)})


def hit_failure_rule(first_eval_loss: float, num_classes: int) -> bool:
    """Whether a run hit the failure rule (config ``finetune.failure_rule``): its training loss
    at its first evaluation has not fallen below chance, log(num_classes), the cross-entropy of
    a uniform guess. A run that collapses to one class stays there; a run that learns is far
    below it by then. A non-finite loss hits the rule."""
    return not first_eval_loss < math.log(num_classes)


def conv_rms(params) -> list[float]:
    """The root-mean-square weight of each conv layer of one model's parameters, in order."""
    return [float(np.sqrt(np.mean(np.square(np.asarray(layer["w"], np.float64)))))
            for name, layer in sorted(params.items()) if models.conv_layers((name,), None)]


def diagnostics(nets: Sequence[models.CNN], spec: models.CNNSpec, arm: str,
                init_keys: Array) -> list[dict]:
    """Per seed, what the run started from: each conv layer's weight RMS (``conv_rms``) beside
    that of the random initialiser with the same key (``conv_rms_random``), so that transferred
    filters far larger or smaller than a random start show in the records."""
    out = []
    for i, net in enumerate(nets):
        ref = net if arm == "random" else initial_model(spec, None, "random", init_keys[i])
        out.append({"conv_rms": conv_rms(models.params_of(net)),
                    "conv_rms_random": conv_rms(models.params_of(ref))})
    return out


def apply_failure_rule(rows: list[dict], evals: Sequence[dict], rule: str,
                       num_classes: int) -> None:
    """Adds what the run looked like at its first evaluation and the failure rule's verdict to
    each run record (``rows`` in the order of the evaluations' per-seed lists): the training
    loss, the largest gradient norm of a step until then (``first_eval_max_grad_norm``) and
    the saturated fraction of each hidden layer's units (``first_eval_saturated``, conv1..convN
    then fc; :meth:`scae.models.modules.CNN.saturated_fractions`), where the evaluation
    recorded them."""
    first = evals[0] if evals else {}
    losses = first.get("train_loss_per_seed") or [math.nan] * len(rows)
    for i, (r, loss) in enumerate(zip(rows, losses)):
        r.update(first_eval_epoch=first.get("epoch"), first_eval_train_loss=float(loss),
                 chance_loss=math.log(num_classes), failure_rule=rule)
        for key, field in (("max_grad_norm_per_seed", "first_eval_max_grad_norm"),
                           ("saturated_per_seed", "first_eval_saturated")):
            if key in first:
                r[field] = first[key][i]
        hit = hit_failure_rule(float(loss), num_classes)
        r["failure_hit"] = hit
        # Under 'none' no rule judges the run: it carries no verdict of its own, only the
        # diagnostics, and the tables judge it post hoc by its selected error
        # (scae.report.tables.failed_runs), as its failure_rule='none' tells them.
        if rule != "none":
            r["failed"] = hit


def initial_model(spec: models.CNNSpec, stack: Stack | None, arm: str, key: Array,
                  log: Callable[[str], None] = print) -> models.CNN:
    """The CNN of ``arm`` initialised from ``key``: random, or with conv k from CAE layer k."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r} not in {ARMS}")
    if arm == "random":
        return models.CNN(spec, rngs=nnx.Rngs(key))
    if stack is None:
        raise ValueError(f"the {arm} arm needs a stack")
    return stack.to_cnn(spec, rngs=nnx.Rngs(key), log=log)


def error_fn(graphdef: nnx.GraphDef, seeds: int = 1, on_features: bool = False) -> Callable:
    """``errors(params, images, labels) -> percent misclassified``, in batches that bound
    memory: :data:`EVAL_BATCH` images at once over ``seeds`` vmapped copies. With
    ``on_features`` the inputs are the conv features (:meth:`scae.models.modules.CNN.features`) and
    only the head runs."""
    batch = driver.per_seed_batch(EVAL_BATCH, seeds, "vmap")

    def errors(params, images, labels):
        model = models.merge(graphdef, params)
        logits = driver.batched_apply(model.head if on_features else model, images,
                                      min(batch, images.shape[0]))
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


def run_cell(config, data: inputs_lib.Inputs, stack: Stack | Sequence[Stack] | None,
             label_size: int, arm: str, seeds: Sequence[int], ckpt_dir: Path,
             log: Callable[[str], None] = print,
             lr_factor: float = 1.0) -> tuple[list[dict], dict]:
    """Trains ``arm`` at ``label_size`` for ``seeds`` together (or resumes it); ``stack`` is
    the stack every seed starts from, or one stack per seed.

    Returns one record per seed and the selected parameters (leading seed axis, pure dict).
    Each record: label_size, arm, seed, epochs, steps, best_epoch, val_error, test_error
    (percent; the test error of the parameters with the lowest validation error),
    cell_time_s (the wall time of the whole cell) and seeds_together (how many seeds shared
    it), the labelled subset's fingerprint, the validation curve, ``lr_scale`` (the factor
    on the arm's ``learning_rate``, which the record names too (``finetune.arm_learning_rates``,
    else ``finetune.learning_rate``): ``lr_factor``, halved by divergence retries), the test
    set's size, ``max_grad_norm`` (the largest global gradient norm of any of its steps),
    ``saturated_start`` (each hidden layer's saturated fraction of units at the start, on
    :data:`PROBE_IMAGES` of the seed's training images; the evaluations record it as they go)
    and the diagnostics of :func:`diagnostics` and :func:`apply_failure_rule`
    (``failed`` when ``finetune.failure_rule`` is not 'none').
    """
    fc = config.finetune
    spec = models.CNNSpec.from_config(config.model, data.image_shape)
    subsets = np.stack([inputs_lib.labelled(data, label_size, s) for s in seeds])
    train_x, train_y = data.train_images, np.asarray(data.train_labels)
    # The refit: a cell that takes the whole labelled pool trains on the validation images
    # too, for the schedule chosen on validation beforehand, and reports its final model.
    refit = bool(fc.get("refit_full", False)) and label_size == train_x.shape[0]
    if refit:
        train_x = jnp.concatenate([train_x, data.val_images])
        train_y = np.concatenate([train_y, np.asarray(data.val_labels)])
        subsets = np.stack([np.arange(train_x.shape[0])] * len(seeds))
    # The cell that takes the whole pool trains for the full-label schedule, when the sweep
    # chose one on validation (finetune.full_epochs).
    full = label_size == data.train_images.shape[0] and fc.get("full_epochs", 0)
    p = driver.plan(subsets.shape[1], fc.batch_size, full or fc.epochs, fc.min_steps)
    # The arm's own rate (finetune.arm_learning_rates), else finetune.learning_rate.
    rate = cfglib.arm_learning_rate(config, arm)
    own_rate = arm in cfglib.arm_learning_rates(config)
    arm_fc = fc.copy_and_resolve_references()
    arm_fc.learning_rate = rate
    quiet = lambda _: None
    stacks = list(stack) if isinstance(stack, (list, tuple)) else [stack] * len(seeds)
    init_keys, order_keys, step_keys = (jnp.stack(k) for k in
                                        zip(*(seed_keys(config.seed, s) for s in seeds)))
    nets = [initial_model(spec, stacks[i], arm, init_keys[i], log if i == 0 else quiet)
            for i in range(len(seeds))]
    starts = diagnostics(nets, spec, arm, init_keys)
    graphdef, _ = models.split(nets[0])
    params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
    mask = models.frozen_mask(nets[0], models.conv_layers) if arm == "frozen" else None
    n = len(seeds)
    batching = config.compare.get("seed_batching", "auto")
    shift, flip = int(fc.get("augment_translate", 0)), bool(fc.get("augment_flip", False))
    probes = train_x[jnp.asarray(subsets[:, :PROBE_IMAGES])]  # (seeds, P, H, W, C)
    saturation = jax.jit(driver.over_seeds(
        lambda q, x: models.merge(graphdef, q).saturated_fractions(x), (0, 0), batching))
    with accounting.part("evaluation"):
        at_start = np.asarray(saturation(params, probes))
    for i, start in enumerate(starts):
        start["saturated_start"] = [float(v) for v in at_start[i]]

    def loss_fn(q, batch, key):
        # The key is the seed's step key, the same in every arm: the arms see the same
        # augmented batches and dropout masks.
        x, (aug_key, drop_key) = batch[0], jax.random.split(key)
        if shift or flip:
            x = augment.augment(x, aug_key, shift, flip)
        if arm == "frozen":
            # The optimiser zeroes the conv layers' updates; stopping their gradient as well
            # spares computing it and leaves the gradient norm the head's, as with the
            # frozen features computed once below.
            q = {k: jax.lax.stop_gradient(v) if models.conv_layers((k,), None) else v
                 for k, v in q.items()}
        return models.merge(graphdef, q).loss(x, batch[1], drop_key)

    data_xy, pool = (train_x, jnp.asarray(train_y)), jnp.asarray(subsets)
    # The refit has no validation images: they are training images.
    held_out = {"test": data.test_images} if refit else {"val": data.val_images,
                                                         "test": data.test_images}
    cache = None
    if arm == "frozen" and not (shift or flip):
        # The frozen conv layers map an image to the same features at every step, so they are
        # computed once (for the validation and test images too) and the steps train the head
        # alone: the same losses and gradients, without the conv layers' passes.
        with accounting.part("frozen features"):
            cache = frozen_features(graphdef, params, train_x, train_y, subsets, held_out,
                                    seed_batching=batching)
            if cache is not None:  # (features not cached: nothing to wait for)
                jax.block_until_ready(cache.data)
    if cache is not None:
        data_xy, pool, held_out = cache.data, cache.pool, cache.held_out
        loss_fn = lambda q, batch, key: models.merge(graphdef, q).head_loss(
            batch[0], batch[1], jax.random.split(key)[1])
        log(f"{arm} at {label_size} labels: conv features computed once "
            f"({cache.copies} cop{'y' if cache.copies == 1 else 'ies'} of "
            f"{data_xy[0].shape[0] // cache.copies} training, {len(data.val_images)} validation "
            f"and {len(data.test_images)} test images), the head trained on them")
    # Images, or features; seeds that share their conv layers (one stack) share one copy.
    per_seed_inputs = cache is not None and cache.copies > 1
    val_err = jax.jit(driver.over_seeds(
        error_fn(graphdef, driver.seeds_at_once(n, batching), on_features=cache is not None),
        (0, 0 if per_seed_inputs else None, None), batching))
    val_x, val_y = held_out.get("val"), jnp.asarray(data.val_labels)

    def evaluate(state, epoch):
        saturated = {"saturated_per_seed": np.asarray(
            saturation(state["params"], probes)).tolist()}
        if refit:  # no held-out images: the last epoch's model is the one reported
            return dict(state, best=jax.tree.map(jnp.copy, state["params"]),
                        best_epoch=jnp.full((n,), epoch, jnp.int32)), \
                {"val_error": [float("nan")] * n, **saturated}
        errs = val_err(state["params"], val_x, val_y)
        return keep_best(state, errs, epoch), {"val_error": [float(e) for e in np.asarray(errs)],
                                               **saturated}

    phase = driver.Phase(
        name=f"{arm} {label_size} labels x{n} seeds", where=f"{arm} run at {label_size} labels",
        ckpt_dir=ckpt_dir, plan=p,
        loss_fn=loss_fn,
        make_tx=lambda scale: optim.make(arm_fc, p.total_steps, mask,
                                         lr_scale=scale * lr_factor),
        learning_rate=lambda scale, step: optim.rate(arm_fc, p.total_steps,
                                                     scale * lr_factor, step),
        params=params, data=data_xy, pool=pool, order_key=order_keys,
        step_key=step_keys, seeds=tuple(seeds), seed_batching=batching,
        spread=config.compare.get("spread", "auto"),
        steps_per_call=fc.steps_per_call, checkpoint_seconds=fc.get("checkpoint_seconds", 0.0),
        eval_epochs=frozenset([p.epochs] if refit else eval_epochs(p.epochs, fc.evals)),
        evaluate=evaluate,
        extra_state={"best": jax.tree.map(jnp.copy, params), "best_val": jnp.full((n,), jnp.inf),
                     "best_epoch": jnp.zeros((n,), jnp.int32)},
        lr_key="finetune.arm_learning_rates" if own_rate else "finetune.learning_rate",
        retries=fc.get("divergence_retries", 0), log=log,
        on_eval=lambda record: writer.scalars(record["evals"][-1]["step"], {
            **{f"val_error/seed{s}": v for s, v in zip(seeds, record["evals"][-1]["val_error"])},
            "img_per_s": record["evals"][-1]["img_per_s"],
            "learning_rate": record["evals"][-1]["learning_rate"]}))
    # Beside the checkpoints' folder, which a sweep removes once a point is recorded.
    writer = events.for_config(config, ckpt_dir.parent.with_name("events") / ckpt_dir.name)
    try:
        result = driver.train(phase)
    finally:
        writer.close()
    state, record = result.state, result.record
    with accounting.part("evaluation"):
        test_err = (np.asarray(val_err(state["best"], held_out["test"],
                                       jnp.asarray(data.test_labels)))
                    if len(data.test_labels) else np.full(n, np.nan))
    curves = [[[e["epoch"], e["val_error"][i]] for e in record["evals"]] for i in range(n)]
    rows = [{"label_size": label_size, "arm": arm, "seed": int(s), "epochs": p.epochs,
             "steps": p.total_steps, "best_epoch": int(state["best_epoch"][i]),
             "val_error": float("nan") if refit else float(state["best_val"][i]),
             "test_error": float(test_err[i]), "refit_full": refit,
             "train_size": int(subsets.shape[1]),
             "cell_time_s": record["time_s"], "seeds_together": n,
             "subset": subset_digest(subsets[i]), "learning_rate": rate,
             "lr_scale": result.lr_scale * lr_factor,
             "test_size": int(len(data.test_labels)), "num_classes": spec.num_classes,
             **({"full_epochs": int(full)} if full else {}), **starts[i],
             "max_grad_norm": record["run_max_grad_norm_per_seed"][i], "curve": curves[i]}
            for i, s in enumerate(seeds)]
    apply_failure_rule(rows, record["evals"], fc.get("failure_rule", "none"), spec.num_classes)
    return rows, jax.tree.map(np.asarray, state["best"])


class FrozenFeatures(NamedTuple):
    """The frozen arm's inputs as conv features (:func:`frozen_features`)."""

    data: tuple[Array, Array]  # (features, labels) of the training images the subsets draw
    pool: Array  # (seeds, n) indices into ``data``, each seed's subset in order
    held_out: dict[str, Array]  # features of each held-out set: (N, F), or (seeds, N, F)
    copies: int  # 1 when every seed has the same conv layers, else the number of seeds


def frozen_features(graphdef: nnx.GraphDef, params, images: Array, labels: np.ndarray,
                    subsets: np.ndarray, held_out: dict[str, Array] | None = None,
                    max_bytes: int | None = None,
                    seed_batching: str = "auto") -> FrozenFeatures | None:
    """The frozen arm's inputs as conv features, or None when they would take more than
    ``max_bytes`` (default :data:`FROZEN_CACHE_BYTES`).

    ``params`` are the seeds' CNN parameters (leading seed axis), ``subsets`` (seeds, n) their
    indices into ``images``/``labels``, ``held_out`` further image sets (validation, test).
    The training features are those of the U images of the union of subsets, seed i's in rows
    i*U..(i+1)*U, and the pool indexes seed i's subset within them in the order of
    ``subsets`` (the same batches as without the cache). When every seed has the same conv
    layers (one stack) one copy serves them all: U rows, and held-out features (N, F) rather
    than (seeds, N, F).
    """
    held_out = held_out or {}
    n = subsets.shape[0]
    union, inverse = np.unique(subsets, return_inverse=True)
    copies = 1 if _shared_convs(params) else n
    params = jax.tree.map(lambda a: a[:copies], params)
    features = lambda q, x: models.merge(graphdef, q).features(x)
    width = int(np.prod(jax.eval_shape(features, jax.tree.map(lambda a: a[0], params),
                                       images[:1]).shape[1:]))
    rows = union.size + sum(v.shape[0] for v in held_out.values())
    if copies * rows * width * 4 > (FROZEN_CACHE_BYTES if max_bytes is None else max_bytes):
        return None
    # Every image set through one program: (copies, U + held-out images, F), then cut.
    sets = [images[jnp.asarray(union)]] + list(held_out.values())
    feats = driver.seed_map(features, params, jnp.concatenate(sets),
                            driver.per_seed_batch(EVAL_BATCH, copies, seed_batching), seed_batching)
    cuts = np.cumsum([len(v) for v in sets])[:-1]
    train_f, *held_f = jnp.split(feats, cuts, axis=1)
    del feats
    f, pool = driver.seed_stretches(train_f, inverse.reshape(subsets.shape))
    y = jnp.asarray(np.tile(np.asarray(labels)[union], copies))
    held = {k: h[0] if copies == 1 else h for k, h in zip(held_out, held_f)}
    return FrozenFeatures((f, y), pool, held, copies)


def _shared_convs(params) -> bool:
    """Whether every seed (leading axis of ``params``) has the same conv layers."""
    convs = [v for name, layer in params.items() if models.conv_layers((name,), None)
             for v in jax.tree.leaves(layer)]
    return all(bool(jnp.all(v == v[:1])) for v in convs)
