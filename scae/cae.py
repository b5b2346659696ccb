"""One convolutional auto-encoder layer (Masci et al., 2011, section 2), as pure functions.

Parameters are a dict: ``w`` (k, k, c_in, maps) the encoder kernel, ``b`` (maps,) one bias
per hidden map, ``c`` (c_in,) one bias per input channel, and ``w_dec`` (k, k, maps, c_in)
only for the untied and upsampling decoders (the paper ties the decoder to ``w``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from scae import ops

Array = jax.Array
Params = dict[str, Array]

DECODERS = ("tied", "untied", "upsample")
NOISES = ("none", "mask", "gaussian")

INITIALIZERS = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform,
    "glorot_normal": jax.nn.initializers.glorot_normal,
    "lecun_uniform": jax.nn.initializers.lecun_uniform,
    "lecun_normal": jax.nn.initializers.lecun_normal,
    "he_normal": jax.nn.initializers.he_normal,
}


@dataclasses.dataclass(frozen=True)
class CAESpec:
    """Static description of one CAE layer: everything but its parameters."""

    in_channels: int
    maps: int
    kernel: int
    sparsity_pool: int = 2  # 1 = no max-pooling sparsity
    activation: str = "scaled_tanh"
    decoder: str = "tied"
    noise: str = "none"
    noise_level: float = 0.0
    init: str = "glorot_uniform"
    conv_impl: str = "auto"  # see scae.ops.resolve_impl

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} not in {DECODERS}")
        if self.noise not in NOISES:
            raise ValueError(f"noise {self.noise!r} not in {NOISES}")


def init_kernel(key: Array, shape: tuple[int, ...], init: str) -> Array:
    """A conv (HWIO) or dense (IO) kernel from the named initialiser family."""
    return INITIALIZERS[init]()(key, shape, jnp.float32)


def init(spec: CAESpec, key: Array) -> Params:
    """Fresh parameters: initialised kernels, zero biases."""
    k_enc, k_dec = jax.random.split(key)
    shape = (spec.kernel, spec.kernel, spec.in_channels, spec.maps)
    params = {
        "w": init_kernel(k_enc, shape, spec.init),
        "b": jnp.zeros((spec.maps,), jnp.float32),
        "c": jnp.zeros((spec.in_channels,), jnp.float32),
    }
    if spec.decoder != "tied":
        dec_shape = (spec.kernel, spec.kernel, spec.maps, spec.in_channels)
        params["w_dec"] = init_kernel(k_dec, dec_shape, spec.init)
    return params


def encode(spec: CAESpec, params: Params, x: Array) -> Array:
    """Hidden maps h = act(x * W + b), a valid convolution: (N, H-k+1, W-k+1, maps)."""
    z = ops.conv_valid(x, params["w"], spec.conv_impl)
    return ops.activation(spec.activation)(z + params["b"])


def sparsify(spec: CAESpec, h: Array) -> Array:
    """What the decoder sees: the max-pool-sparse map (or, for 'upsample', each window's max
    copied over the window, as in pool -> nearest-neighbour upsampling)."""
    p = spec.sparsity_pool
    if spec.decoder == "upsample":
        return ops.upsample_nearest(ops.max_pool(h, p), p, h.shape[1:3])
    return ops.pool_sparsify(h, p)


def decode(spec: CAESpec, params: Params, h_sparse: Array) -> Array:
    """Reconstruction y = act(full-conv(h, W~) + c), back at the input's size."""
    if spec.decoder == "tied":
        z = ops.conv_full_tied(h_sparse, params["w"], spec.conv_impl)
    else:
        z = ops.conv_full(h_sparse, params["w_dec"], spec.conv_impl)
    return ops.activation(spec.activation)(z + params["c"])


def corrupt(spec: CAESpec, x: Array, key: Array) -> Array:
    """The noisy input of the denoising variant; the target stays the clean ``x``."""
    if spec.noise == "mask" and spec.noise_level > 0:
        return x * jax.random.bernoulli(key, 1.0 - spec.noise_level, x.shape).astype(x.dtype)
    if spec.noise == "gaussian" and spec.noise_level > 0:
        return x + spec.noise_level * jax.random.normal(key, x.shape, x.dtype)
    return x


def reconstruct(spec: CAESpec, params: Params, x: Array) -> Array:
    """Clean-input reconstruction (no noise): encode, sparsify, decode."""
    return decode(spec, params, sparsify(spec, encode(spec, params, x)))


def loss(spec: CAESpec, params: Params, x: Array, key: Array) -> Array:
    """Mean squared error between the reconstruction of the corrupted ``x`` and ``x``."""
    y = decode(spec, params, sparsify(spec, encode(spec, params, corrupt(spec, x, key))))
    return jnp.mean(jnp.square(y - x))
