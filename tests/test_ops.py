"""The compute-dtype switch of the ops: bf16 matmul operands, float32 accumulation and results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scae.models import ops

CONVS = ["conv_valid", "conv_full_tied", "conv_full"]


def _case(op):
    kx, kw = jax.random.split(jax.random.PRNGKey(7))
    w = jax.random.normal(kw, (3, 5, 4, 6)) * 0.3
    x = jax.random.normal(kx, (2, 9, 8, 6 if op != "conv_valid" else 4))
    return x, (w.swapaxes(2, 3) if op == "conv_full" else w)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("impl", ["matmul", "xla"])
@pytest.mark.parametrize("op", CONVS)
def test_bfloat16_convolutions_are_close_to_float32_and_return_float32(op, impl):
    x, w = _case(op)
    f = getattr(ops, op)
    y32, y16 = f(x, w, impl, "float32"), f(x, w, impl, "bfloat16")
    assert y16.dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: about 0.4% per operand; the float32 sums keep it there.
    assert 0 < _rel(y16, y32) < 1e-2
    loss = lambda dtype: lambda x, w: jnp.sum(jnp.sin(f(x, w, impl, dtype)))
    g32 = jax.grad(loss("float32"), (0, 1))(x, w)
    g16 = jax.grad(loss("bfloat16"), (0, 1))(x, w)
    for a, b in zip(g16, g32):
        assert a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
        assert _rel(a, b) < 2e-2


@pytest.mark.parametrize("op", CONVS)
def test_float32_is_exactly_the_default(op):
    x, w = _case(op)
    f = getattr(ops, op)
    np.testing.assert_array_equal(f(x, w, "matmul"), f(x, w, "matmul", "float32"))


def test_compute_dtype_block_sets_the_default_while_tracing():
    x, w = _case("conv_valid")
    with ops.compute_dtype("bfloat16"):
        assert ops.resolve_dtype(None) == "bfloat16"
        y = jax.jit(lambda x, w: ops.conv_valid(x, w, "matmul"))(x, w)
    assert ops.resolve_dtype(None) == "float32"
    np.testing.assert_array_equal(y, ops.conv_valid(x, w, "matmul", "bfloat16"))
    assert not np.array_equal(y, ops.conv_valid(x, w, "matmul"))
    # An explicit argument wins over the block.
    y32 = ops.conv_valid(x, w, "matmul")
    with ops.compute_dtype("bfloat16"):
        np.testing.assert_array_equal(ops.conv_valid(x, w, "matmul", "float32"), y32)


def test_unknown_compute_dtype_is_refused():
    x, w = _case("conv_valid")
    with pytest.raises(ValueError, match="float16"):
        ops.conv_valid(x, w, "matmul", "float16")
    with pytest.raises(ValueError, match="float64"), ops.compute_dtype("float64"):
        pass


def test_matmul_bfloat16_rounds_operands_and_accumulates_in_float32():
    a = jax.random.normal(jax.random.PRNGKey(0), (64, 512))
    b = jax.random.normal(jax.random.PRNGKey(1), (512, 32))
    y = ops.matmul(a, b, "bfloat16")
    assert y.dtype == jnp.float32
    exact = np.asarray(a.astype(jnp.bfloat16), np.float64) @ np.asarray(b.astype(jnp.bfloat16),
                                                                        np.float64)
    # Products of bf16 numbers are exact in float32; only the float32 sum rounds.
    np.testing.assert_allclose(y, exact, rtol=1e-4, atol=1e-3)
    assert _rel(y, a @ b) > 1e-4  # the operands really were rounded


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tied_cae_step_in_either_dtype(dtype):
    """A whole tied CAE loss (encode, sparsify, decode) under the switch: close to float32,
    finite float32 gradients."""
    x = jax.random.uniform(jax.random.PRNGKey(3), (4, 12, 12, 3))
    w = jax.random.normal(jax.random.PRNGKey(4), (5, 5, 3, 8)) * 0.2

    def loss(w, dtype):
        h = jnp.tanh(ops.conv_valid(x, w, "matmul", dtype))
        y = jnp.tanh(ops.conv_full_tied(ops.pool_sparsify(h, 2), w, "matmul", dtype))
        return jnp.mean(jnp.square(y - x))

    l32, g32 = jax.value_and_grad(loss)(w, "float32")
    loss_d, g = jax.value_and_grad(loss)(w, dtype)
    assert loss_d.dtype == g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
    assert abs(float(loss_d - l32)) < 1e-2 * float(l32)
    assert _rel(g, g32) < 5e-2


def test_transposed_patches_are_im2col_transposed():
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 7, 6, 3))
    p = ops.im2col(x, 3, 2).reshape(-1, 3 * 2 * 3)
    np.testing.assert_array_equal(ops.im2col_t(x, 3, 2), p.T)
    # The bf16 patches move bits (uint16) and must equal the rounded float32 patches.
    xb = x.astype(jnp.bfloat16)
    np.testing.assert_array_equal(ops._patches(xb, 3, 2), p.astype(jnp.bfloat16))
    np.testing.assert_array_equal(ops._patches(xb, 3, 2, transposed=True),
                                  p.T.astype(jnp.bfloat16))


def test_config_compute_dtype_defaults_to_float32_and_is_validated():
    from scae import config as cfglib
    from scae.errors import InputError

    c = cfglib.base_config("mnist")
    assert c.model.compute_dtype == "float32"  # never bf16 by default
    c.model.compute_dtype = "bfloat16"
    cfglib.validate(c)
    c.model.compute_dtype = "float16"
    with pytest.raises(InputError, match="model.compute_dtype"):
        cfglib.validate(c)


@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
@pytest.mark.parametrize("p", [1, 2, 3])
def test_pooling_before_the_activation_is_the_same_function(name, p):
    # 11 - 3 + 1 = 9 rows: whole windows for p = 1 and 3, partial ones for p = 2; the gradient
    # must reach the same window maxima.
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 9, 2))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 2, 3))
    b = jnp.array([0.3, -0.2, 1.0])
    act = ops.activation(name)
    ref = lambda x, w, b: ops.max_pool(act(ops.conv_valid(x, w, "matmul") + b), p)
    got = lambda x, w, b: ops.conv_pool_activate(x, w, b, name, p, "matmul")
    np.testing.assert_allclose(got(x, w, b), ref(x, w, b), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.PRNGKey(1), ref(x, w, b).shape)
    for a, want in zip(jax.grad(lambda *v: jnp.sum(got(*v) * g), argnums=(0, 1, 2))(x, w, b),
                       jax.grad(lambda *v: jnp.sum(ref(*v) * g), argnums=(0, 1, 2))(x, w, b)):
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("p", [2, 3])
def test_conv_pool_equals_pooling_the_convolution_with_ties(p):
    # Zero regions make every position of a window tie (the background of MNIST digits):
    # the gradient is shared among the ties exactly as max-pooling's is.
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    x = jax.random.normal(k[0], (3, 4 + 3 * p, 4 + 2 * p, 4))
    x = x.at[0].set(0.0).at[1, :6, :6].set(0.0)
    w = jax.random.normal(k[1], (5, 5, 4, 6)) * 0.2
    ref = lambda x, w: ops.max_pool(ops.conv_valid(x, w, "matmul"), p)
    got = lambda x, w: ops.conv_pool(x, w, p, "matmul")
    assert got(x, w).shape == ref(x, w).shape == (3, 3, 2, 6)
    np.testing.assert_allclose(got(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(k[2], ref(x, w).shape)
    loss = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * g), argnums=(0, 1))(x, w)
    for a, want in zip(loss(got), loss(ref)):
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)
    # Under vmap (the seeds of a cell), each kernel its own.
    ws = jnp.stack([w, -w])
    np.testing.assert_allclose(jax.vmap(got, in_axes=(None, 0))(x, ws)[1], ref(x, -w),
                               rtol=1e-5, atol=1e-5)


def _reduce_pool(x, p):
    """Max-pooling as a max reduction over the window axes, differentiated by JAX."""
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, x.shape[1] // p, p, x.shape[2] // p, p, c).max(axis=(2, 4))


@pytest.mark.parametrize("shape,p", [((2, 6, 8, 3), 2), ((2, 7, 5, 2), 2), ((1, 9, 9, 2), 3)])
def test_max_pool_and_its_gradient_equal_a_max_reduction_with_ties(shape, p):
    """The elementwise max-pooling gives the reduction's values and gradient, ties shared
    equally (rounded values tie often), partial edge windows included; the mask keeps the
    first maximum of each window in row-major order."""
    x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), shape) * 2)
    top, vjp = jax.vjp(lambda v: ops.max_pool(v, p), x)
    want, want_vjp = jax.vjp(lambda v: _reduce_pool(v, p), x)
    g = jax.random.normal(jax.random.PRNGKey(1), want.shape)
    np.testing.assert_array_equal(top, want)
    got_g, want_g = jax.jit(vjp)(g)[0], jax.jit(want_vjp)(g)[0]
    # The same shares: a tie of three divides by 3, which XLA may round differently in the
    # two programs.
    np.testing.assert_allclose(got_g, want_g, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got_g != 0, want_g != 0)
    assert float(jnp.abs(want_g).max()) > 0
    mask = np.asarray(ops.pool_mask(x, p))
    xs = np.asarray(x)
    for i in range(0, shape[1], p):
        for j in range(0, shape[2], p):
            window = xs[:, i:i + p, j:j + p, :].reshape(shape[0], -1, shape[3])
            first = np.argmax(window == window.max(axis=1, keepdims=True), axis=1)
            got = mask[:, i:i + p, j:j + p, :].reshape(shape[0], -1, shape[3])
            np.testing.assert_array_equal(got.sum(axis=1), 1)
            np.testing.assert_array_equal(np.argmax(got, axis=1), first)


def test_winograd_tile_maximum_shares_the_gradient_of_ties_as_a_reduction():
    from scae.models import winograd

    y = jnp.round(jax.random.normal(jax.random.PRNGKey(2), (4, 6, 5)))
    g = jax.random.normal(jax.random.PRNGKey(3), (6, 5))
    got, vjp = jax.vjp(lambda v: winograd._max_of([v[i] for i in range(4)]), y)
    want, want_vjp = jax.vjp(lambda v: v.max(axis=0), y)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(vjp(g)[0], want_vjp(g)[0])
