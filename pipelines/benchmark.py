"""Times the compiled training steps of the paper's CNN and CAE layers on random data.

  python -m pipelines.benchmark --workload=cnn --arch=mnist --batch=128
  python -m pipelines.benchmark --workload=cae --layer=2 --peak
  python -m pipelines.benchmark --all
  python -m pipelines.benchmark --ab=dtype --rounds=5 --steps=5

Prints one JSON line: workload, layer, arch, batch, seeds, img_per_s (per seed), step_ms,
gflop_per_s (analytic FLOPs, see scae.models.flops; also XLA's own count as xla_gflop_per_s), and
with --peak the measured fp32 matmul GFLOP/s and the fraction of it reached.

--memory prints instead XLA's memory analysis of the compiled step (argument, output and
temporary MB): what a device holds for one phase besides the data set.

--all times every step at both sizes in the peers' order (MNIST then CIFAR-10; CNN, CAE layers
1-3): one JSON line for the machine (CPU, vector extensions, matmul peaks), then one per step.

--ab compiles variants in one process and times them in alternation (--rounds rounds), so the
machine's drift hits every variant alike: 'dtype' float32 against bfloat16 matmul operands;
'impl' the dense steps' convolution paths; 'seeds' the CNN step of 1, 2, 5 and 10 seeds per
seed path (XLA or patch matmuls vmapped, XLA mapped), with total img/s and the gain over one
seed. The machine line carries XLA_FLAGS, which switches GPU command buffers (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from pipelines import common
from scae import config as cfglib
from scae import provenance
from scae.errors import InputError
from scae.models import flops, ops, stack
from scae.models import modules as models
from scae.train import driver, optim

_WORKLOAD = flags.DEFINE_enum("workload", "cnn", ["cnn", "cae"], "Which training step.")
_LAYER = flags.DEFINE_integer("layer", 1, "CAE layer of the paper's stack (cae workload).")
_ARCH = flags.DEFINE_enum("arch", "mnist", ["mnist", "cifar10"], "Input size: 28x28x1 or 32x32x3.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per step (per seed).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per compiled call (a lax.scan).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Models trained together in one program.")
_SEED_BATCHING = flags.DEFINE_enum("seed_batching", "auto", list(driver.SEED_BATCHINGS),
                                   "How --seeds > 1 share the program (see "
                                   "scae.train.driver.resolve_seed_batching).")
_PEAK = flags.DEFINE_bool("peak", False, "Also measure the fp32 matmul peak.")
_MEMORY = flags.DEFINE_bool("memory", False, "Print XLA's memory analysis of the compiled "
                            "step (argument, output and temporary MB) instead of timing it.")
_IMPL = flags.DEFINE_enum("conv_impl", "auto", list(ops.CONV_IMPLS),
                          "Convolution implementation (see scae.models.ops.resolve_impl).")

_DTYPE = flags.DEFINE_enum("dtype", "float32", list(ops.COMPUTE_DTYPES),
                           "Matmul operand dtype (config.model.compute_dtype); accumulation, "
                           "parameters and optimizer stay float32.")
_ALL = flags.DEFINE_bool("all", False, "Time every step at both sizes (the peers' order); "
                         "--workload, --layer and --arch are then ignored.")
_PEAK_N = flags.DEFINE_integer("peak_n", 4096, "Size n of the n x n matmul that measures the "
                               "peak.")
_AB = flags.DEFINE_enum("ab", None, ["dtype", "impl", "seeds"], "Time variants of every step "
                        "(dtype), of the dense steps (impl) or of the CNN step's seed paths "
                        "(seeds) in alternation; --workload, --layer, --arch, --seeds, "
                        "--conv_impl and --dtype are then ignored.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds of --ab.")

IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# The peers' script order (shared/bench/side_by_side.sh): (arch, workload, layer).
ROWS = tuple((arch, w, k) for arch in ("mnist", "cifar10")
             for w, k in (("cnn", None), ("cae", 1), ("cae", 2), ("cae", 3)))
# The flags that name SIMD width and matrix units, the ones that set a CPU's matmul speed.
_VECTOR_FLAGS = {"sse4_2", "avx", "avx2", "fma", "asimd", "asimdhp", "sve", "sve2", "sme",
                 "sme2", "bf16", "i8mm"}
_VECTOR_PREFIXES = ("avx512", "amx")
# The variants of --ab, the baseline first: name -> (conv_impl, compute dtype).
AB_VARIANTS = {
    "dtype": {"float32": ("auto", "float32"), "bfloat16": ("auto", "bfloat16")},
    # bf16 patch matmuls are the one form in which every convolution's products are bf16.
    "impl": {"fp32 auto": ("auto", "float32"), "fp32 matmul": ("matmul", "float32"),
             "bf16 matmul": ("matmul", "bfloat16")},
}

# --ab=seeds: the numbers of seeds in one program, and the seed paths as (conv_impl,
# seed_batching). One seed is the one-model program whatever the batching.
SEED_COUNTS = (1, 2, 5, 10)
SEED_PATHS = {"xla vmap": ("xla", "vmap"), "matmul vmap": ("matmul", "vmap"),
              "xla map": ("xla", "map")}


def vector_extensions() -> list[str]:
    """The CPU's vector and matrix extensions from /proc/cpuinfo (empty where there is none)."""
    return sorted(n for n in provenance.cpu_flags() or ()
                  if n in _VECTOR_FLAGS or n.startswith(_VECTOR_PREFIXES))


cpu_model = provenance.cpu_model


def best_seconds(fn, *args, repeats: int = 5) -> float:
    """The fastest of ``repeats`` calls of ``fn(*args)`` in seconds, each waited for, after one
    warm-up call (compilation)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """Measured GFLOP/s of an n x n matmul (the machine's practical peak): float32, or bf16
    operands with float32 accumulation for ``dtype='bfloat16'``."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    a = a.astype(jnp.bfloat16) if dtype == "bfloat16" else a
    f = jax.jit(lambda x: ops.matmul(x, x, dtype))
    return 2 * n**3 / best_seconds(f, a, repeats=repeats) / 1e9


def check_layer(arch: str, layer: int) -> None:
    """An InputError unless ``layer`` is a CAE layer of ``arch``'s paper stack."""
    n = len(cfglib.base_config(arch).model.features)
    if not 1 <= layer <= n:
        raise InputError(f"--layer: expected 1..{n} (a CAE layer of the {arch} stack), "
                         f"got {layer}")


def machine_bytes() -> int:
    """The memory of this host, or of the default device where it reports less."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    stats = jax.devices()[0].memory_stats() or {}
    return min(total, stats.get("bytes_limit") or total)


def check_order(steps: int, batch: int, seeds: int, available: int | None = None) -> None:
    """An InputError unless the batch order of ``steps`` steps of ``batch`` images for each of
    ``seeds`` seeds (:func:`compile_step`: int32 indices, and the one-seed order they are
    stacked from) fits int32 indices and half of ``available`` bytes (:func:`machine_bytes`)."""
    n = steps * batch
    if n >= 2**31:
        raise InputError(f"--steps x --batch: {steps} x {batch} = {n:,} batch indices, more "
                         "than int32 indices hold (2**31); lower --steps")
    need = 4 * n * (seeds + 1)
    available = machine_bytes() if available is None else available
    if need > available // 2:
        raise InputError(f"--steps x --batch: the batch order of {steps} x {batch} images "
                         f"({seeds} seed(s)) takes {need / 1e9:.1f} GB, more than half of this "
                         f"machine's {available / 1e9:.1f} GB; lower --steps")


def _workload(workload: str, arch: str, layer: int, batch: int, impl: str,
              dtype: str = "float32"):
    """(loss_fn, params, data pytree, flops per image-step)."""
    config = cfglib.base_config(arch)
    config.model.conv_impl = impl
    config.model.compute_dtype = dtype
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
    check_layer(arch, layer)
    specs = stack.layer_specs(config, shape[-1])
    spec = specs[layer - 1]
    hw = shape[0]
    for s, p in zip(specs[: layer - 1], config.model.pool_sizes):
        hw = -(-(hw - s.kernel + 1) // p)
    graphdef, params = models.split(models.CAE(spec, rngs=nnx.Rngs(key)))
    data = jax.random.uniform(key, (pool, hw, hw, spec.in_channels))
    loss_fn = lambda p, x, k: models.merge(graphdef, p).loss(x, k)
    return loss_fn, params, data, flops.cae_step(hw, spec.in_channels, spec.kernel, spec.maps, 1)


def compile_step(workload: str, arch: str, layer: int, batch: int, steps: int, seeds: int = 1,
                 impl: str = "auto", dtype: str = "float32", seed_batching: str = "auto"):
    """(compiled, args, flops per image-step): ``steps`` fused training steps of ``seeds``
    models, compiled for ``compiled(*args)``, which returns (params, opt_state, losses, grad_norms).
    ``dtype`` is the matmul operand dtype the step is traced with (:func:`ops.compute_dtype`);
    it and anything else read at tracing time (a module's function) take effect here."""
    loss_fn, params, data, flop_per_img = _workload(workload, arch, layer, batch, impl, dtype)
    tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
    order = jnp.arange(steps * batch) % (4 * batch)
    key = jax.random.PRNGKey(1)
    # The seed axis every phase has (one seed: the one-model program, driver.over_seeds).
    params = jax.tree.map(lambda x: jnp.stack([x] * seeds), params)
    opt_state = jax.vmap(tx.init)(params)
    order = jnp.stack([order] * seeds)
    key = jax.random.split(key, seeds) if seeds > 1 else key[None]
    run = driver.make_steps(loss_fn, tx, batch, steps, seed_batching=seed_batching)
    args = (params, opt_state, data, order, 0, 0, key)
    with ops.compute_dtype(dtype):
        compiled = run.lower(*args).compile()
    return compiled, args, flop_per_img


def alternate(variants: dict, images: int, rounds: int, calls: int = 3) -> dict[str, list[float]]:
    """Times compiled steps in alternation: ``variants`` maps a name to (compiled, args) as
    :func:`compile_step` gives them, each call processing ``images`` images. Each round calls
    every variant once to warm up and ``calls`` times more; returns each variant's median
    img/s per round, so that a machine's drift within minutes hits every variant alike."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, args) in variants.items():
            per_call = []
            for i in range(calls + 1):
                # Fresh parameter buffers for every call, ready before the clock starts.
                state = jax.block_until_ready(jax.tree.map(jnp.copy, args[:2]))
                t = time.perf_counter()
                jax.block_until_ready(fn(*state, *args[2:]))
                if i:
                    per_call.append(images / (time.perf_counter() - t))
            rates[name].append(statistics.median(per_call))
    return rates


def benchmark(workload: str, arch: str, layer: int, batch: int, steps: int, repeats: int,
              seeds: int, impl: str = "auto", dtype: str = "float32",
              seed_batching: str = "auto") -> dict:
    """Times ``steps`` fused training steps of ``seeds`` models in one program (as
    ``seed_batching`` says); returns the figures.
    ``dtype`` is the matmul operand dtype the step is traced with (:func:`ops.compute_dtype`)."""
    compiled, (params, opt_state, data, order, *rest), flop_per_img = compile_step(
        workload, arch, layer, batch, steps, seeds, impl, dtype, seed_batching)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t = time.perf_counter()
        params, opt_state, losses, _ = compiled(params, opt_state, data, order, *rest)
        losses.block_until_ready()
        times.append(time.perf_counter() - t)
    dt = sorted(times[1:])[len(times[1:]) // 2]
    imgs = batch * steps * seeds
    return {"workload": workload, "layer": layer if workload == "cae" else None, "arch": arch,
            "batch": batch, "seeds": seeds, "steps_per_call": steps,
            "seed_batching": driver.resolve_seed_batching(seed_batching) if seeds > 1 else None,
            "img_per_s": round(batch * steps / dt, 1), "step_ms": round(1e3 * dt / steps, 2),
            "gflop_per_s": round(flop_per_img * imgs / dt / 1e9, 1),
            # XLA's cost analysis counts a scan's body once: one step of every seed.
            "xla_gflop_per_s": round(xla_flops * steps / dt / 1e9, 1),
            "mflop_per_img": round(flop_per_img / 1e6, 2),
            "conv_impl": ops.resolve_impl(impl), "dtype": dtype,
            "backend": jax.default_backend(), "devices": jax.device_count()}


def machine(peak_n: int, dtype: str) -> dict:
    """The machine line of ``--all``: CPU, vector extensions, backend and the matmul peaks."""
    out = {"machine": cpu_model(), "vector_extensions": vector_extensions(),
           "cores": os.cpu_count(), "backend": jax.default_backend(),
           "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "peak_gflop_per_s": round(matmul_peak(peak_n), 1)}
    if dtype != "float32":
        out[f"peak_{dtype}_gflop_per_s"] = round(matmul_peak(peak_n, dtype=dtype), 1)
    return out


def all_rows(batch: int, steps: int, repeats: int, seeds: int, impl: str, dtype: str,
             peak_n: int = 4096, seed_batching: str = "auto"):
    """Yields the machine line, then every step of :data:`ROWS` with its share of the fp32
    peak (of the bf16 peak for ``dtype='bfloat16'``, and then also of the fp32 one, since the
    layers Winograd takes stay fp32: :func:`scae.models.ops.conv_valid`)."""
    head = machine(peak_n, dtype)
    yield head
    peak = head.get(f"peak_{dtype}_gflop_per_s", head["peak_gflop_per_s"])
    for arch, workload, layer in ROWS:
        out = benchmark(workload, arch, layer or 1, batch, steps, repeats, seeds, impl, dtype,
                        seed_batching)
        out["fraction_of_peak"] = round(out["gflop_per_s"] / peak, 3)
        if dtype != "float32":
            out["fraction_of_fp32_peak"] = round(out["gflop_per_s"] / head["peak_gflop_per_s"], 3)
        yield out


def ab_row(mode: str, arch: str, workload: str, layer: int | None, rounds: int, batch: int,
           steps: int) -> dict:
    """One step's variants of :data:`AB_VARIANTS` (``mode``) timed by :func:`alternate`: each
    one's median img/s and GFLOP/s, and its ratio to the first variant (per round, median)."""
    variants = {}
    for name, (impl, dtype) in AB_VARIANTS[mode].items():
        fn, args, flop = compile_step(workload, arch, layer or 1, batch, steps, impl=impl,
                                      dtype=dtype)
        variants[name] = (fn, args)
    rates = alternate(variants, steps * batch, rounds)
    base = rates[next(iter(rates))]
    ratios = {name: [round(y / x, 3) for x, y in zip(base, r)]
              for name, r in list(rates.items())[1:]}
    return {"workload": workload, "layer": layer, "arch": arch, "batch": batch,
            "steps_per_call": steps, "rounds": rounds,
            "img_per_s": {n: round(statistics.median(r), 1) for n, r in rates.items()},
            "gflop_per_s": {n: round(statistics.median(r) * flop / 1e9, 1)
                            for n, r in rates.items()},
            "ratio": {n: round(statistics.median(r), 3) for n, r in ratios.items()},
            "ratio_rounds": ratios}


def seeds_row(arch: str, rounds: int, batch: int, steps: int,
              counts: tuple[int, ...] = SEED_COUNTS) -> dict:
    """The CNN step of ``counts`` seeds per path of :data:`SEED_PATHS`, timed by
    :func:`alternate`: per path and count, the median img/s of all seeds together and its
    gain over the path's one-seed program (per round, median)."""
    variants, names = {}, {}
    for path, (impl, batching) in SEED_PATHS.items():
        for k in counts:
            one = (impl, 1)  # the one-seed program of a conv_impl, shared by its paths
            key = one if k == 1 else (impl, batching, k)
            if key not in variants:
                fn, args, _ = compile_step("cnn", arch, 1, batch, steps, k, impl=impl,
                                           seed_batching=batching)
                variants[key] = (fn, args)
            names[(path, k)] = key
    per_seed = alternate({str(key): v for key, v in variants.items()}, steps * batch, rounds)
    total = {key: [r * (1 if len(key) == 2 else key[2]) for r in per_seed[str(key)]]
             for key in variants}
    out = {"workload": "cnn", "arch": arch, "batch": batch, "steps_per_call": steps,
           "rounds": rounds, "seeds": list(counts), "img_per_s": {}, "gain": {}}
    for (path, k), key in names.items():
        base = total[names[(path, counts[0])]]
        out["img_per_s"].setdefault(path, {})[k] = round(statistics.median(total[key]), 1)
        out["gain"].setdefault(path, {})[k] = round(statistics.median(
            [y / x * counts[0] for x, y in zip(base, total[key])]), 2)
    return out


def ab_rows(mode: str, rounds: int, batch: int, steps: int, peak_n: int = 4096):
    """Yields the machine line (both peaks), then :func:`ab_row` for every step of
    :data:`ROWS` ('dtype') or for the dense ones, the CNN and CAE layer 2 ('impl'), or
    :func:`seeds_row` for the CNN at both sizes ('seeds', whose machine line names the XLA
    flags it ran under)."""
    if mode == "seeds":
        yield {**machine(peak_n, "float32"), "xla_flags": os.environ.get("XLA_FLAGS", "")}
        for arch in IMAGE_SHAPES:
            yield seeds_row(arch, rounds, batch, steps)
        return
    yield machine(peak_n, "bfloat16")
    for arch, workload, layer in ROWS:
        if mode == "dtype" or layer in (None, 2):
            yield ab_row(mode, arch, workload, layer, rounds, batch, steps)


def memory(workload: str, arch: str, layer: int, batch: int, seeds: int,
           seed_batching: str = "auto") -> dict:
    """XLA's memory analysis of the compiled training step (one step of ``seeds`` models, as
    ``seed_batching`` says) on this backend: the bytes of its arguments (parameters, optimiser
    state, the data it indexes), outputs and temporaries. What a device holds for one phase,
    besides the data set itself."""
    compiled, *_ = compile_step(workload, arch, layer, batch, 1, seeds,
                                seed_batching=seed_batching)
    m = compiled.memory_analysis()
    mb = lambda b: round(b / 2**20, 1)
    return {"workload": workload, "layer": layer if workload == "cae" else None, "arch": arch,
            "batch": batch, "seeds": seeds,
            "seed_batching": driver.resolve_seed_batching(seed_batching),
            "argument_mb": mb(m.argument_size_in_bytes), "output_mb": mb(m.output_size_in_bytes),
            "temp_mb": mb(m.temp_size_in_bytes), "backend": jax.default_backend()}


def main(config, workdir) -> None:
    """The command: one JSON line per timed step (the envelope of :mod:`pipelines.common`
    turns bad flags into one line and exit 2; config and workdir are not used)."""
    if min(_BATCH.value, _STEPS.value, _REPEATS.value, _SEEDS.value, _PEAK_N.value,
           _ROUNDS.value) < 1:
        raise InputError("--batch, --steps, --repeats, --seeds, --peak_n and --rounds must be "
                         ">= 1")
    # Every flag is checked here, before anything compiles, for every path alike.
    if not (_AB.value or _ALL.value) and _WORKLOAD.value == "cae":
        check_layer(_ARCH.value, _LAYER.value)
    if _MEMORY.value and not (_AB.value or _ALL.value):
        check_order(1, _BATCH.value, _SEEDS.value)  # --memory compiles one step
    else:
        check_order(_STEPS.value, _BATCH.value,
                    max(SEED_COUNTS) if _AB.value == "seeds" else 1 if _AB.value
                    else _SEEDS.value)
    lines = None
    if _AB.value:
        lines = ab_rows(_AB.value, _ROUNDS.value, _BATCH.value, _STEPS.value, _PEAK_N.value)
    elif _ALL.value:
        lines = all_rows(_BATCH.value, _STEPS.value, _REPEATS.value, _SEEDS.value, _IMPL.value,
                         _DTYPE.value, _PEAK_N.value, _SEED_BATCHING.value)
    if lines is not None:
        for line in lines:
            print(json.dumps(line), flush=True)
        return
    if _MEMORY.value:
        print(json.dumps(memory(_WORKLOAD.value, _ARCH.value, _LAYER.value, _BATCH.value,
                                _SEEDS.value, _SEED_BATCHING.value)), flush=True)
        return
    out = benchmark(_WORKLOAD.value, _ARCH.value, _LAYER.value, _BATCH.value, _STEPS.value,
                    _REPEATS.value, _SEEDS.value, _IMPL.value, _DTYPE.value,
                    _SEED_BATCHING.value)
    if _PEAK.value:
        peak = matmul_peak(_PEAK_N.value)
        out["peak_gflop_per_s"] = round(peak, 1)
        out["fraction_of_peak"] = round(out["gflop_per_s"] / peak, 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
