"""scae.models.winograd against direct convolutions (XLA's), in values and gradients, and the ops
dispatch that chooses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scae.models import ops, winograd


def _data(shape, k, c_out, seed=0):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, shape[-1], c_out)) / np.sqrt(k * k * shape[-1])
    return x, w


def _close(got, want, tol=2e-5):
    """Winograd's rounding error scales with the largest value (the transforms mix a tile's
    values), so the check is relative to the largest magnitude, not elementwise."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tol * np.abs(want).max()


@pytest.mark.parametrize("k", winograd.KERNELS)
def test_matrices_give_the_correlation(k):
    bt, g, at = winograd.matrices(k)
    rng = np.random.default_rng(k)
    for _ in range(5):
        d, f = rng.normal(size=k + 1), rng.normal(size=k)
        want = [d[i:i + k] @ f for i in range(winograd.M)]
        np.testing.assert_allclose(at @ ((g @ f) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


# Even and odd output sizes (odd ones pad a partial tile), one tile, several maps.
SHAPES = [((3, 12, 12, 20), 5, 7), ((2, 14, 13, 6), 5, 4), ((2, 9, 11, 7), 3, 5),
          ((2, 4, 4, 9), 3, 6)]


@pytest.mark.parametrize("shape,k,c_out", SHAPES)
def test_conv_valid_and_its_gradients_match_xla(shape, k, c_out):
    x, w = _data(shape, k, c_out)
    got, want = winograd.conv_valid(x, w), ops.conv_valid(x, w, "xla")
    assert got.shape == want.shape
    _close(got, want)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    for g, r in zip(jax.grad(loss(winograd.conv_valid), (0, 1))(x, w),
                    jax.grad(loss(lambda x, w: ops.conv_valid(x, w, "xla")), (0, 1))(x, w)):
        _close(g, r)


@pytest.mark.parametrize("shape,k,c_out", SHAPES)
def test_conv_transpose_is_the_adjoint_and_matches_the_tied_decoder(shape, k, c_out):
    x, w = _data(shape, k, c_out)
    h = jax.random.normal(jax.random.PRNGKey(7), winograd.conv_valid(x, w).shape)
    got = winograd.conv_transpose(h, w)
    (adjoint,) = jax.vjp(lambda x: winograd.conv_valid(x, w), x)[1](h)
    _close(got, adjoint)
    _close(got, ops.conv_full_tied(h, w, "xla"))
    loss = lambda f: lambda h, w: jnp.sum(jnp.sin(f(h, w)))
    for g, r in zip(jax.grad(loss(winograd.conv_transpose), (0, 1))(h, w),
                    jax.grad(loss(lambda h, w: ops.conv_full_tied(h, w, "xla")), (0, 1))(h, w)):
        _close(g, r)


def test_input_transform_vjps_are_each_others_adjoint():
    k, th, tw = 5, 3, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 2 * th + k - 1, 2 * tw + k - 1, 3))
    v = jax.random.normal(jax.random.PRNGKey(1), ((k + 1) ** 2, 2 * th * tw, 3))
    tx = winograd._input_transform(x, k, th, tw)
    tv = winograd._input_adjoint(v, k, th, tw)
    np.testing.assert_allclose(jnp.vdot(tx, v), jnp.vdot(x, tv), rtol=1e-5)
    # The hand-written VJP against autodiff of the plain slices.
    _, auto = jax.vjp(lambda x: jnp.stack(winograd._points(x, k, th, tw)), x)
    _, hand = jax.vjp(lambda x: winograd._input_transform(x, k, th, tw), x)
    _close(hand(v)[0], auto(v)[0])


@pytest.mark.parametrize("shape", [(3, 12, 12, 20), (2, 14, 14, 17)])
def test_conv_pool2_matches_pooling_the_convolution(shape):
    x, w = _data(shape, 5, 9)
    want = lambda x, w: ops.max_pool(ops.conv_valid(x, w, "xla"), 2)
    _close(winograd.conv_pool2(x, w), want(x, w))
    # The forward-only form and the differentiable one give the same values.
    _close(winograd.conv_pool2(x, w), winograd._pool2_stacked(x, w))
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(3 * f(x, w)))
    for g, r in zip(jax.grad(loss(winograd.conv_pool2), (0, 1))(x, w),
                    jax.grad(loss(want), (0, 1))(x, w)):
        _close(g, r)


def test_conv_pool2_refuses_an_odd_output():
    x, w = _data((2, 13, 12, 20), 5, 4)  # 9 x 8: the last row of tiles would pool padding
    with pytest.raises(ValueError, match="even valid output"):
        winograd.conv_pool2(x, w)
    with pytest.raises(ValueError, match="even valid output"):
        jax.grad(lambda x: winograd.conv_pool2(x, w).sum())(x)


@pytest.mark.parametrize("shape,gain", [((3, 12, 12, 20), 1.0), ((2, 14, 14, 17), 1.0),
                                        ((2, 12, 12, 16), 40.0)])
def test_tied_sparse_pass_matches_its_three_steps(shape, gain):
    """The tile-layout pass against encode -> pool_sparsify -> tied decoder: the same values and
    gradients. A large gain saturates the activation, so windows hold exact ties, which
    both must give to the first maximum."""
    x, w = _data(shape, 5, 9)
    w = w * gain
    b = 0.1 * jax.random.normal(jax.random.PRNGKey(5), (9,))
    act = ops.activation("scaled_tanh")
    h = act(ops.conv_valid(x, w, "winograd") + b)
    if gain > 1:
        assert int(jnp.sum(h == h.max())) > 4 * h.shape[0]  # ties within windows
    steps = lambda impl: lambda x, w, b: ops.conv_full_tied(
        ops.pool_sparsify(act(ops.conv_valid(x, w, impl) + b), 2), w, impl)
    fused = lambda x, w, b: winograd.tied_sparse_pass(x, w, b, act)
    # The same tiles underneath: equal to the bit, ties included. Against XLA's convolutions
    # only without saturation: their rounding turns near-ties at the activation's ceiling into
    # other maxima.
    np.testing.assert_array_equal(jax.jit(fused)(x, w, b), jax.jit(steps("winograd"))(x, w, b))
    refs = [steps("winograd")] + ([steps("xla")] if gain == 1 else [])
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(3 * f(*a)))
    for ref in refs:
        _close(fused(x, w, b), ref(x, w, b))
        for g, r in zip(jax.grad(loss(fused), (0, 1, 2))(x, w, b),
                        jax.grad(loss(ref), (0, 1, 2))(x, w, b)):
            _close(g, r)
    np.testing.assert_array_equal(
        ops.tied_sparse_pass(x, w, b, "scaled_tanh", 2, "winograd"), fused(x, w, b))


def test_tied_sparse_pass_elsewhere_is_the_three_steps():
    """Where the tiles are not the sparsity windows (odd output, pool 3, no sparsity, few
    maps, the patches impl) ops.tied_sparse_pass composes the three ops."""
    b = jnp.linspace(-0.1, 0.1, 6)
    cases = [(_data((2, 13, 12, 20), 5, 6), 2, "float32"), (_data((2, 12, 12, 20), 5, 6), 3,
             "float32"), (_data((2, 12, 12, 20), 5, 6), 1, "float32"),
             (_data((2, 12, 12, 3), 5, 6), 2, "float32")]
    cases = [(*c, "winograd") for c in cases]
    cases.append((_data((2, 12, 12, 20), 5, 6), 2, "bfloat16", "matmul"))
    for (x, w), p, dtype, impl in cases:
        h = ops.activation("tanh")(ops.conv_valid(x, w, impl, dtype) + b)
        want = ops.conv_full_tied(ops.pool_sparsify(h, p), w, impl, dtype)
        np.testing.assert_array_equal(ops.tied_sparse_pass(x, w, b, "tanh", p, impl, dtype),
                                      want)


@pytest.mark.cpu_only
def test_auto_is_winograd_on_the_cpu():
    """conv_impl 'auto' resolves by backend: Winograd on the CPU only (XLA's convolutions
    elsewhere), hence the marker."""
    assert ops.resolve_impl("auto") == "winograd"
    x, w = _data((2, 12, 12, ops.WINOGRAD_MIN_MAPS), 5, 6)
    np.testing.assert_array_equal(ops.conv_valid(x, w, "auto"), winograd.conv_valid(x, w))
    np.testing.assert_array_equal(ops.conv_pool(x, w, 2, "auto"), winograd.conv_pool2(x, w))


def test_ops_take_winograd_only_where_it_applies():
    x, w = _data((2, 12, 12, ops.WINOGRAD_MIN_MAPS), 5, 6)
    np.testing.assert_array_equal(ops.conv_valid(x, w, "winograd"), winograd.conv_valid(x, w))
    np.testing.assert_array_equal(ops.conv_pool(x, w, 2, "winograd"), winograd.conv_pool2(x, w))
    h = ops.conv_valid(x, w, "matmul")
    np.testing.assert_array_equal(ops.conv_full_tied(h, w, "winograd"),
                                  winograd.conv_transpose(h, w))
    assert not np.array_equal(ops.conv_valid(x, w, "winograd"), ops.conv_valid(x, w, "matmul"))
    # bf16 leaves Winograd's layers in float32 (its transforms would amplify bf16 rounding),
    # in every op that takes Winograd.
    np.testing.assert_array_equal(ops.conv_valid(x, w, "winograd", "bfloat16"),
                                  winograd.conv_valid(x, w))
    np.testing.assert_array_equal(ops.conv_pool(x, w, 2, "winograd", "bfloat16"),
                                  winograd.conv_pool2(x, w))
    np.testing.assert_array_equal(ops.conv_full_tied(h, w, "winograd", "bfloat16"),
                                  winograd.conv_transpose(h, w))
    b = jnp.zeros(w.shape[-1])
    np.testing.assert_array_equal(ops.tied_sparse_pass(x, w, b, "tanh", 2, "winograd", "bfloat16"),
                                  winograd.tied_sparse_pass(x, w, b, jnp.tanh))
    # Too few input maps or a kernel size not in WINOGRAD_KERNELS: the patches path, in the
    # compute dtype.
    few, wf = _data((2, 12, 12, ops.WINOGRAD_MIN_MAPS - 1), 5, 6)
    k3, w3 = _data((2, 9, 9, 32), 3, 6)
    for a, b, dtype in [(few, wf, "float32"), (k3, w3, "float32"), (k3, w3, "bfloat16")]:
        np.testing.assert_array_equal(ops.conv_valid(a, b, "winograd", dtype),
                                      ops.conv_valid(a, b, "matmul", dtype))
