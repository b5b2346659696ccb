"""Trains a small CAE for a few steps with 2, 3 and 5 seeds in one program, with the seeds
spread over the devices (or on one device), and saves the results: run by
tests/test_parallel.py with 1 and 4 forced host devices."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# This checkout, not an installed copy of the project: the script runs as a file, so its own
# folder (tests/) heads sys.path, and an editable install may point at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scae import config as cfglib  # noqa: E402
from scae.models import modules as models  # noqa: E402
from scae.train import driver, optim, parallel  # noqa: E402


def main(out: str, spread: str) -> None:
    config = cfglib.base_config("mnist")
    tx = optim.make(config.pretrain, 10)
    key = jax.random.PRNGKey(0)
    x = jax.random.uniform(key, (64, 12, 12, 1))
    spec = models.CAESpec(1, 4, 5, noise="mask", noise_level=0.2)
    graphdef, p0 = models.split(models.CAE(spec, rngs=nnx.Rngs(key)))
    loss = lambda q, b, k: models.merge(graphdef, q).loss(b, k)
    results = {"devices": np.array(jax.device_count())}
    for seeds in (2, 3, 5):
        params = jax.tree.map(lambda a: jnp.stack([a * (1 + 0.1 * i) for i in range(seeds)]), p0)
        order = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 64)
                           for i in range(seeds)])
        keys = jax.random.split(key, seeds)
        run = driver.make_steps(loss, tx, 16, 3, seed_batching="map", spread=spread)
        args = (*parallel.replicate((params, jax.vmap(tx.init)(params), x)), order, 0, 0, keys)
        text = run.lower(*args).compile().as_text()
        # Each device trains its own seeds: no collective inside the steps (the loop's
        # computations); the outputs are gathered once, in the entry computation.
        inner = [c for c in re.split(r"\n(?=\S)", text) if not c.startswith("ENTRY")]
        results[f"s{seeds}/all_reduce"] = np.array(any(
            op in c for c in inner for op in ("all-reduce(", "all-gather(", "collective-permute(")))
        q, _, losses, _ = run(*args)
        results.update({f"s{seeds}/{k}": np.asarray(v) for k, v in q.items()})
        results[f"s{seeds}/losses"] = np.asarray(losses)
    results["spread"] = np.array(parallel.spread(spread, 2))
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
