"""Seeds in one program: vmapped or mapped one after another (scae.train.driver.over_seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scae.train import driver


def _loss(params, batch, key):
    x, y = batch
    noise = 0.01 * jax.random.normal(key, y.shape)
    return jnp.mean(jnp.square(jnp.tanh(x @ params["w"]) + params["b"] - y + noise))


def test_resolve():
    assert driver.resolve_seed_batching("auto") == (
        "map" if jax.default_backend() == "cpu" else "vmap")
    assert driver.resolve_seed_batching("vmap") == "vmap"
    with pytest.raises(ValueError, match="seed batching"):
        driver.resolve_seed_batching("pmap")
    assert driver.seeds_at_once(3, "vmap") == 3 and driver.seeds_at_once(3, "map") == 1
    assert driver.per_seed_batch(128, 3, "vmap") == 42
    assert driver.per_seed_batch(128, 3, "map") == 128
    assert driver.per_seed_batch(2, 3, "vmap") == 1


def test_over_seeds_map_equals_vmap_with_shared_and_per_seed_arguments():
    f = lambda a, shared, b, scale: (a @ shared + b * scale, a.sum())
    a = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    shared = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    b = jnp.arange(3.0)
    outs = [jax.jit(driver.over_seeds(f, (0, None, 0, None), m))(a, shared, b, 2.0)
            for m in ("map", "vmap")]
    for got, want in zip(*outs):
        np.testing.assert_allclose(got, want, rtol=1e-5)  # sums in another order
    assert outs[0][0].shape == (3, 4, 2)
    with pytest.raises(ValueError, match="in_axes"):
        driver.over_seeds(f, (1, None, 0, None))


@pytest.mark.parametrize("context", [False, True])
def test_make_steps_map_trains_each_seed_as_vmap_does(context):
    """Every seed's parameters, optimiser state and losses after steps with its own order and
    key are those of the vmapped program, whichever way the seeds share it."""
    seeds, n, batch, steps = 3, 32, 8, 6
    key = jax.random.PRNGKey(2)
    data = (jax.random.normal(key, (n, 4)), jax.random.normal(jax.random.PRNGKey(3), (n, 2)))
    params = {"w": jax.random.normal(jax.random.PRNGKey(4), (seeds, 4, 2)),
              "b": jnp.zeros((seeds, 2))}
    tx = optax.adam(0.01)
    order = jnp.stack([jax.random.permutation(jax.random.PRNGKey(s), n) for s in range(seeds)])
    keys = jax.random.split(key, seeds)
    loss = ((lambda p, b, k, c: _loss(p, b, k) * c) if context else _loss)
    ctx = jnp.array([1.0, 2.0, 0.5]) if context else None
    out = {}
    for mode in ("map", "vmap"):
        run = driver.make_steps(loss, tx, batch, steps, seed_batching=mode)
        p = jax.tree.map(jnp.copy, params)
        out[mode] = run(p, jax.vmap(tx.init)(p), data, order, 0, 0, keys, ctx)
    for got, want in zip(jax.tree.leaves(out["map"]), jax.tree.leaves(out["vmap"])):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert out["map"][2].shape == out["map"][3].shape == (seeds, steps)
    # The seeds did train apart: different orders and keys, different losses.
    assert not np.allclose(out["map"][2][0], out["map"][2][1])
    # Each step's gradient norm is that of its seed's loss at the parameters before the step.
    for m in range(seeds):
        first = jax.tree.map(lambda a: a[order[m, :batch]], data)
        args = (ctx[m],) if context else ()
        grads = jax.grad(loss)(jax.tree.map(lambda a: a[m], params), first,
                               jax.random.fold_in(keys[m], 0), *args)
        want = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads)))
        np.testing.assert_allclose(out["map"][3][m, 0], want, rtol=1e-5)


def test_seed_map_in_bounded_batches():
    params = {"w": jnp.arange(3.0)[:, None, None] * jnp.ones((3, 2, 2))}
    x = jax.random.normal(jax.random.PRNGKey(0), (10, 2))
    fn = lambda q, v: v @ q["w"]
    for mode in ("map", "vmap"):
        got = driver.seed_map(fn, params, x, 4, mode)
        assert got.shape == (3, 10, 2)
        np.testing.assert_allclose(got, jnp.einsum("nc,scd->snd", x, params["w"]), rtol=1e-6)
