"""Runs two training steps of a CAE layer, of two seeds' CAE layers in one program (mapped and
vmapped) and of the CNN, and saves the parameters.

Used by test_parallel.py in subprocesses with 1 and 2 (forced host) devices:
  python tests/one_step.py OUT.npz
"""

import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx, traverse_util

# This checkout, not an installed copy of the project: the script runs as a file, so its own
# folder (tests/) heads sys.path, and an editable install may point at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scae import config as cfglib  # noqa: E402
from scae.models import modules as models  # noqa: E402
from scae.train import driver, optim, parallel  # noqa: E402


def _one_seed(run, tx, params, data, order, key):
    """``run`` (driver.make_steps) on one seed: its outputs without the seed axis."""
    one = jax.tree.map(lambda a: a[None], params)
    out = run(*parallel.replicate((one, jax.vmap(tx.init)(one), data)), order[None], 0, 0,
              key[None])
    return jax.tree.map(lambda a: a[0], out)


def main(out: str) -> None:
    config = cfglib.base_config("mnist")
    config.model.features = (8, 8, 8)
    config.model.fc_width = 16
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (64, 28, 28, 1))
    y = jax.random.randint(key, (64,), 0, 10)
    order = jax.random.permutation(key, 64)
    tx = optim.make(config.pretrain, 10)
    results = {"devices": np.array(parallel.num_devices())}
    # How the training step lays out a batch: the devices holding a slice of its first axis.
    seen = []
    jax.jit(lambda b: jax.debug.inspect_array_sharding(
        parallel.shard_batch(b), callback=lambda s: seen.append(s)))(x)
    sharding = seen[0]
    results["batch_shards"] = np.array(len({str(i) for i in
                                            sharding.devices_indices_map(x.shape).values()}))

    spec = models.CAESpec(1, 8, 5, noise="mask", noise_level=0.2)
    graphdef, p = models.split(models.CAE(spec, rngs=nnx.Rngs(key)))
    run = driver.make_steps(lambda q, b, k: models.merge(graphdef, q).loss(b, k), tx, 32, 2)
    p, _, losses, _ = _one_seed(run, tx, p, x, order, key)
    results.update({f"cae/{k}": np.asarray(v) for k, v in p.items()})
    results["cae/losses"] = np.asarray(losses)

    # Two seeds in one program (driver.over_seeds), each with its own order and key.
    _, p0 = models.split(models.CAE(spec, rngs=nnx.Rngs(key)))
    seeds_p = jax.tree.map(lambda a: np.stack([a, 0.9 * np.asarray(a)]), p0)
    orders = np.stack([order, order[::-1]])
    keys = jax.random.split(key, 2)
    for mode in ("map", "vmap"):
        run = driver.make_steps(lambda q, b, k: models.merge(graphdef, q).loss(b, k), tx, 32, 2,
                                seed_batching=mode)
        ps, _, losses, _ = run(*parallel.replicate((seeds_p, jax.vmap(tx.init)(seeds_p), x)),
                            orders, 0, 0, keys)
        results.update({f"seeds_{mode}/{k}": np.asarray(v) for k, v in ps.items()})
        results[f"seeds_{mode}/losses"] = np.asarray(losses)

    graphdef, q = models.split(models.CNN(models.CNNSpec.from_config(config.model, (28, 28, 1)),
                                          rngs=nnx.Rngs(key)))
    run = driver.make_steps(lambda r, b, k: models.merge(graphdef, r).loss(b[0], b[1]), tx, 32, 2)
    q, _, losses, _ = _one_seed(run, tx, q, (x, y), order, key)
    flat = traverse_util.flatten_dict(jax.device_get(q), sep="/")
    results.update({f"cnn/{k}": np.asarray(v) for k, v in flat.items()})
    results["cnn/losses"] = np.asarray(losses)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])

