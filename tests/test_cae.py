"""The CAE layer: tied decoder, max-pool sparsity, noise and shapes through the stack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scae import config as cfglib
from scae.models import modules as models
from scae.models import ops, stack


def test_tied_decoder_is_the_transposed_convolution():
    kx, kw, kh = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 12, 12, 3))
    w = jax.random.normal(kw, (5, 5, 3, 7))
    h = jax.random.normal(kh, (2, 8, 8, 7))
    _, vjp = jax.vjp(lambda v: ops.conv_valid(v, w), x)
    (expected,) = vjp(h)
    np.testing.assert_allclose(ops.conv_full_tied(h, w), expected, rtol=1e-5, atol=1e-5)


def test_tied_decoder_is_the_full_convolution_with_the_flipped_kernel():
    # Direct definition: y[i, j, c] = sum_{a, b, m} h[i - a, j - b, m] * w[a, b, c, m].
    h = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(3, 3, 1, 2)).astype(np.float32)
    y = np.zeros((1, 6, 6, 1), np.float32)
    for i in range(4):
        for j in range(4):
            y[0, i:i + 3, j:j + 3, 0] += np.einsum("abm,m->ab", w[:, :, 0, :], h[0, i, j])
    np.testing.assert_allclose(ops.conv_full_tied(jnp.asarray(h), jnp.asarray(w)), y,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["conv_valid", "conv_full_tied", "conv_full"])
def test_matmul_convolutions_equal_xla_in_value_and_gradient(op):
    kx, kw = jax.random.split(jax.random.PRNGKey(4))
    w = jax.random.normal(kw, (3, 5, 4, 6))
    x = jax.random.normal(kx, (2, 9, 8, 6 if op != "conv_valid" else 4))
    if op == "conv_full":
        w = w.swapaxes(2, 3)
    f = getattr(ops, op)
    loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(f(x, w, impl)))
    np.testing.assert_allclose(f(x, w, "matmul"), f(x, w, "xla"), rtol=1e-4, atol=1e-4)
    for gm, gx in zip(jax.grad(loss("matmul"), (0, 1))(x, w), jax.grad(loss("xla"), (0, 1))(x, w)):
        np.testing.assert_allclose(gm, gx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,p", [((3, 8, 8, 4), 2), ((2, 7, 9, 3), 2), ((2, 9, 9, 2), 3)])
def test_pool_sparsify_keeps_one_value_per_window(shape, p):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = np.asarray(ops.pool_sparsify(x, p))
    pooled = np.asarray(ops.max_pool(x, p))
    hp, wp = pooled.shape[1:3]
    for i in range(hp):
        for j in range(wp):
            win = y[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :]
            assert np.all((win != 0).sum(axis=(1, 2)) == 1)
            np.testing.assert_array_equal(win.sum(axis=(1, 2)), pooled[:, i, j, :])


def test_pool_sparsify_equals_pool_then_unpool_and_breaks_ties_first():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 6, 3))
    np.testing.assert_array_equal(ops.pool_sparsify(x, 2), ops.unpool(ops.max_pool(x, 2), x, 2))
    ties = jnp.ones((1, 2, 2, 1))
    np.testing.assert_array_equal(np.asarray(ops.pool_sparsify(ties, 2))[0, :, :, 0],
                                  [[1, 0], [0, 0]])
    assert ops.pool_sparsify(x, 1) is x


def test_pool_sparsify_gradient_flows_only_through_the_maxima():
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 4, 2))
    g = jax.grad(lambda v: ops.pool_sparsify(v, 2).sum())(x)
    np.testing.assert_array_equal(g, np.asarray(ops.pool_mask(x, 2), np.float32))


@pytest.mark.parametrize("dataset,image,expected", [
    ("mnist", (28, 28, 1), [(28, 28, 1), (12, 12, 100), (4, 4, 150)]),
    ("cifar10", (32, 32, 3), [(32, 32, 3), (14, 14, 100), (5, 5, 150)]),
])
def test_shapes_through_the_paper_stack(dataset, image, expected):
    config = cfglib.base_config(dataset)
    s = stack.Stack(stack.layer_specs(config, image[-1]), config.model.pool_sizes,
                    rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((2,) + image, jnp.float32)
    shape = lambda f, *args: jax.eval_shape(f, *args).shape  # traced, not run: paper sizes
    for k, layer in enumerate(s.layers):
        inp = jax.eval_shape(lambda x: s.features(x, k), x)
        assert inp.shape[1:] == expected[k]
        assert shape(layer.reconstruct, inp) == inp.shape
        assert shape(lambda x: s.decode_to_image(x, k + 1), x) == x.shape
        assert s.project_filters(k + 1).shape[-1] == image[-1]  # numpy, from a compiled map
    # The CNN's conv features are the stack's pooled features, so the stack fits it.
    spec = models.CNNSpec.from_config(config.model, image)
    assert shape(s.features, x)[1:] == spec.feature_shape


@pytest.mark.parametrize("init", sorted(models.INITIALIZERS))
def test_kernels_drawn_by_the_compiled_initialiser_equal_the_eager_draws(init):
    # init_kernel compiles its draws at a lower LLVM optimisation level on the CPU; the
    # initial weights, and so every result, must not depend on it.
    for i, shape in enumerate([(5, 5, 1, 100), (3, 3, 150, 200), (800, 300)]):
        key = jax.random.fold_in(jax.random.PRNGKey(7), i)
        np.testing.assert_array_equal(models.init_kernel(key, shape, init),
                                      models.INITIALIZERS[init]()(key, shape, jnp.float32))


def test_projected_filters_spread_each_unit_over_its_window_and_decode_it():
    config = cfglib.base_config("mnist")
    s = stack.Stack(stack.layer_specs(config, 1), config.model.pool_sizes, rngs=nnx.Rngs(1))
    w1, w2, w3 = (np.asarray(layer.w[...]) for layer in s.layers)
    # Layer 2's filters, each spread over 2x2 windows and decoded by layer 1's tied decoder.
    f = ops.upsample_nearest(jnp.moveaxis(w2, 3, 0), 2, (10, 10))
    np.testing.assert_allclose(s.project_filters(2), ops.conv_full_tied(f, w1), atol=1e-5)
    np.testing.assert_allclose(s.project_filters(1), np.moveaxis(w1, 3, 0))
    # Layer 3's, through both layers below.
    f3 = jnp.moveaxis(w3, 3, 0)
    for w in (w2, w1):
        f3 = ops.conv_full_tied(ops.upsample_nearest(f3, 2, (f3.shape[1] * 2,) * 2), w)
    np.testing.assert_allclose(s.project_filters(3), f3, rtol=1e-4, atol=1e-6)
    assert s.project_filters(3).shape == (200, 24, 24, 1)


def test_masking_noise_zeroes_about_p_and_gaussian_noise_adds():
    x = jnp.ones((4, 28, 28, 1))
    layer = lambda **kw: models.CAE(models.CAESpec(1, 4, 5, **kw), rngs=nnx.Rngs(0))
    y = layer(noise="mask", noise_level=0.3).corrupt(x, jax.random.PRNGKey(0))
    assert abs(float((y == 0).mean()) - 0.3) < 0.02
    y = layer(noise="gaussian", noise_level=0.5).corrupt(x, jax.random.PRNGKey(0))
    assert abs(float(jnp.std(y)) - 0.5) < 0.02
    assert layer().corrupt(x, jax.random.PRNGKey(0)) is x


@pytest.mark.parametrize("decoder", ["tied", "untied", "upsample"])
def test_every_decoder_learns_a_tiny_data_set(decoder):
    import optax

    spec = models.CAESpec(1, 6, 5, decoder=decoder, activation="tanh")
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 12, 12, 1))
    graphdef, params = models.split(models.CAE(spec, rngs=nnx.Rngs(1)))
    assert ("w_dec" in params) == (decoder != "tied")
    tx = optax.adam(1e-2)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss_fn = lambda p: models.merge(graphdef, p).loss(x, jax.random.PRNGKey(0))
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(g, state)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(60):
        params, state, loss = step(params, state)
        first = first if first is not None else float(loss)
    assert float(loss) < 0.5 * first


def test_linear_decoder_output_is_the_activation_free_reconstruction():
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 1))
    spec = models.CAESpec(1, 4, 5)
    act = models.CAE(spec, rngs=nnx.Rngs(0))
    lin = models.CAE(models.CAESpec(1, 4, 5, decoder_output="linear"), rngs=nnx.Rngs(0))
    y_act, y_lin = act.reconstruct(x), lin.reconstruct(x)
    assert float(jnp.abs(y_act).max()) < 1.7159
    np.testing.assert_allclose(y_act, ops.scaled_tanh(y_lin), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(y_lin).max()) > 1.7159  # standardised inputs can be reconstructed


def test_compute_dtype_reaches_every_matmul_of_the_models():
    """config.model.compute_dtype=bfloat16 runs the CNN and the CAE on bf16 operands: outputs
    stay float32, close to the float32 model's, and differ from it (the switch is live)."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    out = {}
    for dt in ("float32", "bfloat16"):
        config = cfglib.base_config("mnist")
        config.model.compute_dtype = dt
        cnn = models.CNN(models.CNNSpec.from_config(config.model, (28, 28, 1)), rngs=nnx.Rngs(0))
        cae = models.CAE(stack.layer_specs(config, 1)[0], rngs=nnx.Rngs(0))
        out[dt] = (cnn(x), cae.reconstruct(x))
        assert all(o.dtype == jnp.float32 for o in out[dt])
    for a, b in zip(out["float32"], out["bfloat16"]):
        # bf16 keeps 8 bits of mantissa: close on the whole, not to float32 precision.
        assert float(jnp.mean(jnp.abs(a - b))) < 0.01 * float(jnp.mean(jnp.abs(a))) + 1e-3
        assert not np.array_equal(a, b)
