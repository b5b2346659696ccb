"""Times the compiled training steps of the paper's CNN and CAE layers on random data.

  python -m pipelines.benchmark --workload=cnn --arch=mnist --batch=128
  python -m pipelines.benchmark --workload=cae --layer=2 --peak

Prints one JSON line: workload, layer, arch, batch, seeds, img_per_s (per seed), step_ms,
gflop_per_s (analytic FLOPs, see scae.flops; also XLA's own count as xla_gflop_per_s), and
with --peak the measured fp32 matmul GFLOP/s and the fraction of it reached.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from flax import nnx

from pipelines import usage
from scae import driver, flops, models, ops, optim, stack
from scae import config as cfglib

_WORKLOAD = flags.DEFINE_enum("workload", "cnn", ["cnn", "cae"], "Which training step.")
_LAYER = flags.DEFINE_integer("layer", 1, "CAE layer of the paper's stack (cae workload).")
_ARCH = flags.DEFINE_enum("arch", "mnist", ["mnist", "cifar10"], "Input size: 28x28x1 or 32x32x3.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per step (per seed).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per compiled call (a lax.scan).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Models trained together under jax.vmap.")
_PEAK = flags.DEFINE_bool("peak", False, "Also measure the fp32 matmul peak.")
_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "matmul"],
                          "Convolution implementation (see scae.ops.resolve_impl).")

IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n x n matmul (the machine's practical peak)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _workload(workload: str, arch: str, layer: int, batch: int, impl: str):
    """(loss_fn, params, data pytree, flops per image-step)."""
    config = cfglib.base_config(arch)
    config.model.conv_impl = impl
    shape = IMAGE_SHAPES[arch]
    key = jax.random.PRNGKey(0)
    pool = 4 * batch
    if workload == "cnn":
        graphdef, params = models.split(models.CNN(
            models.CNNSpec.from_config(config.model, shape), rngs=nnx.Rngs(key)))
        data = (jax.random.uniform(key, (pool,) + shape),
                jax.random.randint(key, (pool,), 0, config.model.num_classes))
        loss_fn = lambda p, b, k: models.merge(graphdef, p).loss(b[0], b[1])
        return loss_fn, params, data, flops.cnn_step(config.model, shape, 1)
    if not 1 <= layer <= len(config.model.features):
        raise ValueError(f"--layer: expected 1..{len(config.model.features)}, got {layer}")
    specs = stack.layer_specs(config, shape[-1])
    spec = specs[layer - 1]
    hw = shape[0]
    for s, p in zip(specs[: layer - 1], config.model.pool_sizes):
        hw = -(-(hw - s.kernel + 1) // p)
    graphdef, params = models.split(models.CAE(spec, rngs=nnx.Rngs(key)))
    data = jax.random.uniform(key, (pool, hw, hw, spec.in_channels))
    loss_fn = lambda p, x, k: models.merge(graphdef, p).loss(x, k)
    return loss_fn, params, data, flops.cae_step(hw, spec.in_channels, spec.kernel, spec.maps, 1)


def benchmark(workload: str, arch: str, layer: int, batch: int, steps: int, repeats: int,
              seeds: int, impl: str = "auto") -> dict:
    """Times ``steps`` fused training steps of ``seeds`` vmapped models; returns the figures."""
    loss_fn, params, data, flop_per_img = _workload(workload, arch, layer, batch, impl)
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    key = jax.random.PRNGKey(1)
    if seeds > 1:
        params = jax.tree.map(lambda x: jnp.stack([x] * seeds), params)
        opt_state = jax.vmap(tx.init)(params)
        order, key = jnp.stack([order] * seeds), jax.random.split(key, seeds)
    else:
        opt_state = tx.init(params)
    run = driver.make_steps(loss_fn, tx, batch, steps, seeds=seeds > 1)
    compiled = run.lower(params, opt_state, data, order, 0, 0, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t = time.perf_counter()
        params, opt_state, losses = compiled(params, opt_state, data, order, 0, 0, key)
        losses.block_until_ready()
        times.append(time.perf_counter() - t)
    dt = sorted(times[1:])[len(times[1:]) // 2]
    imgs = batch * steps * seeds
    return {"workload": workload, "layer": layer if workload == "cae" else None, "arch": arch,
            "batch": batch, "seeds": seeds, "steps_per_call": steps,
            "img_per_s": round(batch * steps / dt, 1), "step_ms": round(1e3 * dt / steps, 2),
            "gflop_per_s": round(flop_per_img * imgs / dt / 1e9, 1),
            # XLA's cost analysis counts a scan's body once: one step of every seed.
            "xla_gflop_per_s": round(xla_flops * steps / dt / 1e9, 1),
            "mflop_per_img": round(flop_per_img / 1e6, 2),
            "conv_impl": ops.resolve_impl(impl), "backend": jax.default_backend(),
            "devices": jax.device_count()}


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)
    if min(_BATCH.value, _STEPS.value, _REPEATS.value, _SEEDS.value) < 1:
        print("error: --batch, --steps, --repeats and --seeds must be >= 1", file=sys.stderr)
        sys.exit(2)
    try:
        out = benchmark(_WORKLOAD.value, _ARCH.value, _LAYER.value, _BATCH.value, _STEPS.value,
                        _REPEATS.value, _SEEDS.value, _IMPL.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _PEAK.value:
        peak = matmul_peak()
        out["peak_gflop_per_s"] = round(peak, 1)
        out["fraction_of_peak"] = round(out["gflop_per_s"] / peak, 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parse_plain)
