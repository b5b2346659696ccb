"""Optimisers and learning-rate schedules from a config section (``pretrain`` or ``finetune``)."""

from __future__ import annotations

import jax
import optax


def schedule(cfg, total_steps: int, lr_scale: float = 1.0) -> optax.Schedule:
    """The section's learning-rate schedule over ``total_steps`` steps, times ``lr_scale``:
    with ``warmup_steps`` = w > 0 (where the section has it), step i < w runs at
    (i + 1) / w of the rate, and the schedule proper (cosine or constant) runs over the steps
    after them."""
    lr = cfg.learning_rate * lr_scale
    warm = int(cfg.get("warmup_steps", 0))

    def proper(steps: int) -> optax.Schedule:
        if cfg.schedule == "cosine":
            return optax.cosine_decay_schedule(lr, max(steps, 1))
        return optax.constant_schedule(lr)

    if warm <= 0:
        return proper(total_steps)
    ramp = optax.linear_schedule(lr / warm, lr, max(warm - 1, 1))
    return optax.join_schedules([ramp, proper(total_steps - warm)], [warm])


def rate(cfg, total_steps: int, lr_scale: float, step: int) -> float:
    """The learning rate that :func:`make`'s optimiser applies at ``step`` (0-based)."""
    return float(schedule(cfg, total_steps, lr_scale)(step))


def make(cfg, total_steps: int, trainable_mask=None,
         lr_scale: float = 1.0) -> optax.GradientTransformation:
    """SGD with momentum (the paper's plain gradient descent when momentum is 0) or Adam.

    ``trainable_mask``, a pytree of bools like the parameters, freezes the False leaves: their
    updates are zeroed, so a frozen layer stays bit-for-bit at its initial value.
    """
    lr = schedule(cfg, total_steps, lr_scale)
    if cfg.optimizer == "adam":
        tx = optax.adam(lr)
    else:
        tx = optax.sgd(lr, momentum=cfg.momentum or None)
    if getattr(cfg, "weight_decay", 0.0):
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    if trainable_mask is not None:
        labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask)
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return tx
