"""The models as flax NNX modules over the custom-VJP ops of :mod:`scae.models.ops`: one CAE layer
(Masci et al., 2011, section 2), the classifier CNN of the paper, and their static specs.

A module can be called, inspected (``nnx.display``, ``nnx.state(model, nnx.Param)``) and put
into other training code as any flax model. The training driver does not call modules through
``nnx.jit``: it splits a model once (:func:`split`) and jits a pure function of the parameters
that merges them back (:func:`merge`) inside the traced step, the functional pattern of the
flax guide "Performance considerations". Parameters in that pure form are nested dicts of
arrays, e.g. ``{"conv1": {"w", "b"}, ..., "fc": {...}, "out": {...}}`` for the CNN and
``{"w", "b", "c"[, "w_dec"]}`` for a CAE layer; orbax checkpoints hold exactly that.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scae.errors import InputError
from scae.models import ops

Array = jax.Array
Params = dict  # the pure-dict form of a module's nnx.Param state

DECODERS = ("tied", "untied", "upsample")
DECODER_OUTPUTS = ("activation", "linear")
NOISES = ("none", "mask", "gaussian")
INITIALIZERS = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform,
    "glorot_normal": jax.nn.initializers.glorot_normal,
    "lecun_uniform": jax.nn.initializers.lecun_uniform,
    "lecun_normal": jax.nn.initializers.lecun_normal,
    "he_normal": jax.nn.initializers.he_normal,
}


def init_kernel(key: Array, shape: tuple[int, ...], init: str) -> Array:
    """A conv (HWIO) or dense (IO) kernel from the named initialiser family."""
    return _init_program(init)(key, tuple(int(d) for d in shape))


@functools.cache
def _init_program(init: str):
    """The compiled initialiser of ``init``, by shape. On the CPU it is compiled at LLVM's -O1:
    at XLA's default -O2 a threefry draw of a conv kernel's size compiles for seconds, a
    fraction of that at -O1, for draws that run once and are bit-identical to the default's
    (``tests/test_cae.py``; docs/performance.md: the paper stack and CNN built in 2.0 s
    instead of 5.0 s from a cold process)."""
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return jax.jit(lambda key, shape: INITIALIZERS[init]()(key, shape, jnp.float32),
                   static_argnums=1, compiler_options=options)


def split(model: nnx.Module) -> tuple[nnx.GraphDef, Params]:
    """(graph definition, parameters as a pure dict) of ``model``, for jitted functional code."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def merge(graphdef: nnx.GraphDef, params: Params) -> nnx.Module:
    """The module of ``graphdef`` with ``params``; inside a traced function it costs nothing
    at run time."""
    return nnx.merge(graphdef, params)


def params_of(model: nnx.Module) -> Params:
    """``model``'s parameters as a pure dict (host or device arrays)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def frozen_mask(model: nnx.Module, frozen: nnx.filterlib.Filter) -> Params:
    """A pytree of bools like :func:`params_of`: False where ``frozen`` (an nnx filter) matches,
    for :func:`scae.train.optim.make`'s optax partition."""
    frozen_paths = {path for path, _ in nnx.to_flat_state(nnx.state(model, frozen))}
    return jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(p.key for p in path) not in frozen_paths, params_of(model))


# --- the CAE layer -------------------------------------------------------------------------


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
    conv_impl: str = "auto"  # see scae.models.ops.resolve_impl
    compute_dtype: str = "float32"  # matmul operands; see scae.models.ops.COMPUTE_DTYPES
    # 'activation': y = act(...) as the paper; 'linear': y = full-conv + c, for inputs beyond
    # the activation's range (standardised or whitened pixels).
    decoder_output: str = "activation"

    def __post_init__(self):
        if self.decoder_output not in DECODER_OUTPUTS:
            raise ValueError(f"decoder_output {self.decoder_output!r} not in {DECODER_OUTPUTS}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} not in {DECODERS}")
        if self.noise not in NOISES:
            raise ValueError(f"noise {self.noise!r} not in {NOISES}")


class CAE(nnx.Module):
    """One convolutional auto-encoder layer.

    Parameters: ``w`` (k, k, c_in, maps) the encoder kernel, ``b`` (maps,) one bias per hidden
    map, ``c`` (c_in,) one bias per input channel, and ``w_dec`` (k, k, maps, c_in) only for the
    untied and upsampling decoders (the paper ties the decoder to ``w``).
    """

    def __init__(self, spec: CAESpec, *, rngs: nnx.Rngs):
        self.spec = spec
        k_enc, k_dec = jax.random.split(rngs.params())
        self.w = nnx.Param(init_kernel(
            k_enc, (spec.kernel, spec.kernel, spec.in_channels, spec.maps), spec.init))
        self.b = nnx.Param(jnp.zeros((spec.maps,), jnp.float32))
        self.c = nnx.Param(jnp.zeros((spec.in_channels,), jnp.float32))
        if spec.decoder != "tied":
            self.w_dec = nnx.Param(init_kernel(
                k_dec, (spec.kernel, spec.kernel, spec.maps, spec.in_channels), spec.init))

    def encode(self, x: Array) -> Array:
        """Hidden maps h = act(x * W + b), a valid convolution: (N, H-k+1, W-k+1, maps)."""
        z = ops.conv_valid(x, self.w[...], self.spec.conv_impl, self.spec.compute_dtype)
        return ops.activation(self.spec.activation)(z + self.b[...])

    __call__ = encode

    def encode_pooled(self, x: Array, pool: int) -> Array:
        """``max_pool(self.encode(x), pool)``, pooled before the activation
        (:func:`scae.models.ops.conv_pool_activate`): the input of the layer above."""
        return ops.conv_pool_activate(x, self.w[...], self.b[...], self.spec.activation, pool,
                                      self.spec.conv_impl, self.spec.compute_dtype)

    def sparsify(self, h: Array) -> Array:
        """What the decoder sees: the max-pool-sparse map (or, for 'upsample', each window's
        max copied over the window, as in pool -> nearest-neighbour upsampling)."""
        p = self.spec.sparsity_pool
        if self.spec.decoder == "upsample":
            return ops.upsample_nearest(ops.max_pool(h, p), p, h.shape[1:3])
        return ops.pool_sparsify(h, p)

    def decode(self, h_sparse: Array) -> Array:
        """Reconstruction y = act(full-conv(h, W~) + c) (no act for a linear decoder output),
        back at the input's size."""
        if self.spec.decoder == "tied":
            z = ops.conv_full_tied(h_sparse, self.w[...], self.spec.conv_impl,
                                   self.spec.compute_dtype)
        else:
            z = ops.conv_full(h_sparse, self.w_dec[...], self.spec.conv_impl,
                              self.spec.compute_dtype)
        return self._output(z)

    def _output(self, z: Array) -> Array:
        """The decoder's bias and output activation on its convolution ``z``."""
        if self.spec.decoder_output == "linear":
            return z + self.c[...]
        return ops.activation(self.spec.activation)(z + self.c[...])

    def corrupt(self, x: Array, key: Array) -> Array:
        """The noisy input of the denoising variant; the target stays the clean ``x``."""
        s = self.spec
        if s.noise == "mask" and s.noise_level > 0:
            return x * jax.random.bernoulli(key, 1.0 - s.noise_level, x.shape).astype(x.dtype)
        if s.noise == "gaussian" and s.noise_level > 0:
            return x + s.noise_level * jax.random.normal(key, x.shape, x.dtype)
        return x

    def reconstruct(self, x: Array) -> Array:
        """Clean-input reconstruction (no noise): encode, sparsify, decode."""
        s = self.spec
        if s.decoder == "tied":
            # One op for the three steps: it can keep the hidden maps in Winograd's tiles.
            return self._output(ops.tied_sparse_pass(x, self.w[...], self.b[...], s.activation,
                                                     s.sparsity_pool, s.conv_impl,
                                                     s.compute_dtype))
        return self.decode(self.sparsify(self.encode(x)))

    def loss(self, x: Array, key: Array) -> Array:
        """Mean squared error between the reconstruction of the corrupted ``x`` and ``x``."""
        return jnp.mean(jnp.square(self.reconstruct(self.corrupt(x, key)) - x))


# --- the classifier ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """The paper's CNN: conv layers (each followed by max-pooling with subsampling), one hidden
    fully connected layer and a linear output. Conv k has the topology of CAE layer k."""

    image_shape: tuple[int, int, int]
    features: tuple[int, ...] = (100, 150, 200)
    kernel_sizes: tuple[int, ...] = (5, 5, 3)
    pool_sizes: tuple[int, ...] = (2, 2, 1)
    fc_width: int = 300
    num_classes: int = 10
    activation: str = "scaled_tanh"
    init: str = "glorot_uniform"
    conv_impl: str = "auto"
    compute_dtype: str = "float32"  # matmul operands; see scae.models.ops.COMPUTE_DTYPES
    dropout: float = 0.0  # before the classifier layer, in training only

    @classmethod
    def from_config(cls, model_cfg, image_shape: Sequence[int]) -> CNNSpec:
        """The spec of ``config.model`` for images of ``image_shape`` (H, W, C)."""
        return cls(image_shape=tuple(int(d) for d in image_shape),
                   features=tuple(model_cfg.features), kernel_sizes=tuple(model_cfg.kernel_sizes),
                   pool_sizes=tuple(model_cfg.pool_sizes), fc_width=model_cfg.fc_width,
                   num_classes=model_cfg.num_classes, activation=model_cfg.activation,
                   init=model_cfg.init, conv_impl=model_cfg.get("conv_impl", "auto"),
                   compute_dtype=model_cfg.get("compute_dtype", "float32"),
                   dropout=float(model_cfg.get("dropout", 0.0)))

    @property
    def conv_names(self) -> list[str]:
        return [f"conv{k}" for k in range(1, len(self.features) + 1)]

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the top conv layer's pooled output."""
        h, w, _ = self.image_shape
        for k, p in zip(self.kernel_sizes, self.pool_sizes):
            h, w = -(-(h - k + 1) // p), -(-(w - k + 1) // p)
            if h < 1 or w < 1:
                raise InputError(f"config.model: images of {self.image_shape} shrink to nothing "
                                 f"through kernels {self.kernel_sizes}")
        return h, w, self.features[-1]


class Conv(nnx.Module):
    """A valid convolution with a bias, HWIO kernel ``w`` and bias ``b`` (no activation)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, init: str, impl: str,
                 rngs: nnx.Rngs, compute_dtype: str = "float32"):
        self.impl, self.compute_dtype = impl, compute_dtype
        self.w = nnx.Param(init_kernel(rngs.params(), (kernel, kernel, c_in, c_out), init))
        self.b = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        return ops.conv_valid(x, self.w[...], self.impl, self.compute_dtype) + self.b[...]

    def pooled(self, x: Array, activation: str, pool: int) -> Array:
        """``max_pool(activation(self(x)), pool)``, pooled before the activation
        (:func:`scae.models.ops.conv_pool_activate`)."""
        return ops.conv_pool_activate(x, self.w[...], self.b[...], activation, pool, self.impl,
                                      self.compute_dtype)


class Dense(nnx.Module):
    """x @ w + b, kernel ``w`` (in, out) from the models' initialiser family, zero bias."""

    def __init__(self, n_in: int, n_out: int, *, init: str, rngs: nnx.Rngs,
                 compute_dtype: str = "float32"):
        self.compute_dtype = compute_dtype
        self.w = nnx.Param(init_kernel(rngs.params(), (n_in, n_out), init))
        self.b = nnx.Param(jnp.zeros((n_out,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        return ops.matmul(x, self.w[...], self.compute_dtype) + self.b[...]


class CNN(nnx.Module):
    """The paper's classifier: ``conv1..convN`` (:class:`Conv`), ``fc`` and ``out``
    (:class:`Dense`). Build it from a stack's filters with :meth:`scae.Stack.to_cnn`."""

    def __init__(self, spec: CNNSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        c = spec.image_shape[-1]
        for name, f, k in zip(spec.conv_names, spec.features, spec.kernel_sizes):
            setattr(self, name, Conv(c, f, k, init=spec.init, impl=spec.conv_impl, rngs=rngs,
                                     compute_dtype=spec.compute_dtype))
            c = f
        h, w, c = spec.feature_shape
        dt = spec.compute_dtype
        self.fc = Dense(h * w * c, spec.fc_width, init=spec.init, rngs=rngs, compute_dtype=dt)
        self.out = Dense(spec.fc_width, spec.num_classes, init=spec.init, rngs=rngs,
                         compute_dtype=dt)

    @property
    def convs(self) -> list[Conv]:
        return [getattr(self, n) for n in self.spec.conv_names]

    def features(self, x: Array) -> Array:
        """The top conv layer's pooled maps, flattened: (N, features)."""
        for conv, p in zip(self.convs, self.spec.pool_sizes):
            x = conv.pooled(x, self.spec.activation, p)
        return x.reshape(x.shape[0], -1)

    def pre_activations(self, x: Array) -> list[Array]:
        """What each hidden layer feeds its activation, for images ``x``: every conv layer's
        pooled maps (N, H, W, C), then the fully connected layer's units (N, fc_width)."""
        out = []
        for conv, p in zip(self.convs, self.spec.pool_sizes):
            z = ops.conv_pool(x, conv.w[...], p, conv.impl, conv.compute_dtype) + conv.b[...]
            out.append(z)
            x = ops.activation(self.spec.activation)(z)
        out.append(self.fc(x.reshape(x.shape[0], -1)))
        return out

    def saturated_fractions(self, x: Array) -> Array:
        """Per hidden layer (conv1..convN, fc), the fraction of its units on images ``x``
        whose activation is saturated (:func:`scae.models.ops.saturated`): units that pass
        back almost no gradient, as a start too far out along the tanh leaves them."""
        return jnp.stack([jnp.mean(ops.saturated(self.spec.activation, z))
                          for z in self.pre_activations(x)])

    def head(self, features: Array, dropout_key: Array | None = None) -> Array:
        """Logits (N, classes) from :meth:`features` (N, F): the fully connected layers, with
        dropout before the classifier only when a key is given."""
        h = ops.activation(self.spec.activation)(self.fc(features))
        rate = self.spec.dropout
        if dropout_key is not None and rate > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - rate, h.shape)
            h = jnp.where(keep, h / (1.0 - rate), 0.0)
        return self.out(h)

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        """Logits (N, classes) for images ``x`` (N, H, W, C); dropout only with a key."""
        return self.head(self.features(x), dropout_key)

    def loss(self, images: Array, labels: Array, key: Array | None = None) -> Array:
        """Mean softmax cross-entropy on logits (dropout drawn from ``key`` when given)."""
        return cross_entropy(self(images, key), labels)

    def head_loss(self, features: Array, labels: Array, key: Array | None = None) -> Array:
        """:meth:`loss` from precomputed :meth:`features` (the frozen arm's cached inputs)."""
        return cross_entropy(self.head(features, key), labels)


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of integer ``labels``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def conv_layers(path: tuple, _value) -> bool:
    """An nnx filter matching the CNN's conv layers (what the ``frozen`` arm keeps fixed)."""
    return str(path[0]).startswith("conv")

