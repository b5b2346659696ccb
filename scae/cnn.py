"""The paper's classifier CNN as pure functions: conv layers (each followed by max-pooling
with subsampling), one hidden fully connected layer and a linear output, from ``config.model``.

Parameters: ``{"conv1": {"w", "b"}, ..., "fc": {"w", "b"}, "out": {"w", "b"}}``; conv k has the
topology of CAE layer k of the stack, so the stack's filters can initialise it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scae import cae, ops

Array = jax.Array
Params = dict[str, dict[str, Array]]


def conv_names(model_cfg) -> list[str]:
    return [f"conv{k}" for k in range(1, len(model_cfg.features) + 1)]


def feature_shape(model_cfg, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(H, W, C) of the top conv layer's pooled output for images of ``image_shape``."""
    h, w, _ = image_shape
    for f, k, p in zip(model_cfg.features, model_cfg.kernel_sizes, model_cfg.pool_sizes):
        h, w = -(-(h - k + 1) // p), -(-(w - k + 1) // p)
        if h < 1 or w < 1:
            from scae.errors import InputError

            raise InputError(f"config.model: images of {image_shape} shrink to nothing "
                             f"through kernels {tuple(model_cfg.kernel_sizes)}")
    return h, w, model_cfg.features[-1]


def init(model_cfg, image_shape: tuple[int, int, int], key: Array) -> Params:
    """Fresh parameters, all kernels from ``model_cfg.init`` (the CAEs' family), zero biases."""
    names = conv_names(model_cfg)
    keys = jax.random.split(key, len(names) + 2)
    params, c = {}, image_shape[-1]
    for name, kk, f, k in zip(names, keys, model_cfg.features, model_cfg.kernel_sizes):
        params[name] = {"w": cae.init_kernel(kk, (k, k, c, f), model_cfg.init),
                        "b": jnp.zeros((f,), jnp.float32)}
        c = f
    n_in = 1
    for d in feature_shape(model_cfg, image_shape):
        n_in *= d
    params["fc"] = {"w": cae.init_kernel(keys[-2], (n_in, model_cfg.fc_width), model_cfg.init),
                    "b": jnp.zeros((model_cfg.fc_width,), jnp.float32)}
    params["out"] = {"w": cae.init_kernel(keys[-1], (model_cfg.fc_width, model_cfg.num_classes),
                                          model_cfg.init),
                     "b": jnp.zeros((model_cfg.num_classes,), jnp.float32)}
    return params


def features(model_cfg, params: Params, x: Array) -> Array:
    """The top conv layer's pooled maps, flattened: (N, features)."""
    act = ops.activation(model_cfg.activation)
    impl = model_cfg.get("conv_impl", "auto")
    for name, p in zip(conv_names(model_cfg), model_cfg.pool_sizes):
        x = ops.max_pool(act(ops.conv_valid(x, params[name]["w"], impl) + params[name]["b"]), p)
    return x.reshape(x.shape[0], -1)


def apply(model_cfg, params: Params, x: Array) -> Array:
    """Logits (N, classes) for images ``x`` (N, H, W, C)."""
    act = ops.activation(model_cfg.activation)
    h = act(features(model_cfg, params, x) @ params["fc"]["w"] + params["fc"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def loss(model_cfg, params: Params, images: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy on logits."""
    logits = apply(model_cfg, params, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def conv_mask(params: Params, trainable: bool) -> dict:
    """A bool pytree like ``params``: conv layers ``trainable``, the head always True."""
    return {name: jax.tree.map(lambda _: trainable if name.startswith("conv") else True, sub)
            for name, sub in params.items()}
