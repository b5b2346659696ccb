"""pipelines.benchmark: every row in one command, the machine line, the dtype switch, the
variants timed in alternation (--ab), and nothing but its own lines on stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pipelines import benchmark
from scae.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    # No JAX_PLATFORMS: the backend probe (TPU, GPU plugins) runs as it does for a user.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pipelines.benchmark", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_all_prints_the_machine_then_every_row_in_the_peers_order():
    proc = _run("--all", "--batch=2", "--steps=1", "--repeats=1", "--peak_n=128",
                "--dtype=bfloat16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]  # no absl or backend-probe chatter
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    head, rows = lines[0], lines[1:]
    assert head["peak_gflop_per_s"] > 0 and head["peak_bfloat16_gflop_per_s"] > 0
    assert isinstance(head["vector_extensions"], list) and head["machine"]
    assert [(r["arch"], r["workload"], r["layer"]) for r in rows] == [
        ("mnist", "cnn", None), ("mnist", "cae", 1), ("mnist", "cae", 2), ("mnist", "cae", 3),
        ("cifar10", "cnn", None), ("cifar10", "cae", 1), ("cifar10", "cae", 2),
        ("cifar10", "cae", 3)]
    for r in rows:
        assert r["dtype"] == "bfloat16" and r["img_per_s"] > 0 and 0 < r["fraction_of_peak"]
        assert r["fraction_of_fp32_peak"] == pytest.approx(
            r["gflop_per_s"] / head["peak_gflop_per_s"], rel=0.01, abs=1e-3)


def test_single_row_keeps_its_interface_and_prints_only_its_line():
    proc = _run("--workload=cae", "--layer=3", "--arch=cifar10", "--batch=4", "--steps=1",
                "--repeats=1")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    out = json.loads(line)
    for key in ("workload", "layer", "arch", "batch", "img_per_s", "gflop_per_s"):
        assert key in out
    assert (out["workload"], out["layer"], out["arch"], out["dtype"]) == ("cae", 3, "cifar10",
                                                                          "float32")


@pytest.mark.parametrize("args,name", [(("--dtype=float16",), "dtype"),
                                       (("--ab=fp16",), "ab"),
                                       (("--ab=dtype", "--rounds=0"), "rounds"),
                                       (("--memory", "--workload=cae", "--layer=7"), "--layer"),
                                       (("--workload=cae", "--layer=0"), "--layer"),
                                       (("--steps=20000000",), "--steps")])
def test_bad_flag_is_one_line_and_status_2(args, name):
    proc = _run(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and name in line


def test_a_batch_order_beyond_the_machine_is_refused_before_it_is_built():
    benchmark.check_order(20, 128, 1, available=10**6)  # 20 KB of indices
    with pytest.raises(InputError, match=r"^--steps x --batch: .* 0\.2 GB, more than half "
                                         r"of this machine's 0\.3 GB; lower --steps"):
        benchmark.check_order(200_000, 128, 1, available=3 * 10**8)
    with pytest.raises(InputError, match="more than int32 indices hold"):
        benchmark.check_order(20_000_000, 128, 1, available=2**60)
    with pytest.raises(InputError, match=r"^--layer: expected 1\.\.3 .*got 7"):
        benchmark.check_layer("mnist", 7)


def test_vector_extensions_names_simd_flags_only():
    ext = benchmark.vector_extensions()
    assert all(e.startswith(("avx", "amx", "sse", "fma", "asimd", "sve", "sme", "bf16", "i8mm"))
               for e in ext)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2 " in flags:
        assert "avx2" in ext


def test_alternate_times_every_variant_in_every_round_and_leaves_the_args_unchanged():
    """benchmark.alternate (the timing of --ab) calls the compiled steps on fresh
    copies of their parameters: the given args stay as they were, and each variant gets one
    positive rate per round."""
    fn, args, flop = benchmark.compile_step("cae", "mnist", 3, 4, 2)
    assert flop > 0
    before = [a.copy() for a in jax.tree.leaves(args[:2])]
    rates = benchmark.alternate({"a": (fn, args), "b": (fn, args)}, 8, rounds=3, calls=2)
    assert sorted(rates) == ["a", "b"] and all(len(r) == 3 and min(r) > 0 for r in rates.values())
    for a, b in zip(before, jax.tree.leaves(args[:2])):
        np.testing.assert_array_equal(a, b)
    # The compiled steps train (one seed, 2 steps: 2 losses on the seed axis); they donate the
    # buffers they are given.
    params, _, losses, _ = fn(*jax.tree.map(jax.numpy.copy, args[:2]), *args[2:])
    assert losses.shape == (1, 2) and bool(np.isfinite(losses).all())
    assert any(not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(params)))


def test_ab_row_times_each_variant_in_every_round_against_the_first():
    """--ab's row: every variant of the mode, its median rate, and per round its ratio to the
    first (the float32 baseline), so that the ratios do not mix rounds."""
    row = benchmark.ab_row("dtype", "mnist", "cae", 3, rounds=2, batch=4, steps=1)
    assert (row["workload"], row["layer"], row["arch"], row["rounds"]) == ("cae", 3, "mnist", 2)
    assert list(row["img_per_s"]) == ["float32", "bfloat16"] == list(benchmark.AB_VARIANTS["dtype"])
    assert min(row["img_per_s"].values()) > 0 and min(row["gflop_per_s"].values()) > 0
    assert list(row["ratio_rounds"]) == ["bfloat16"] and len(row["ratio_rounds"]["bfloat16"]) == 2
    assert min(row["ratio_rounds"]["bfloat16"]) <= row["ratio"]["bfloat16"] <= max(
        row["ratio_rounds"]["bfloat16"])
    json.dumps(row)  # printed as one JSON line


def test_ab_impl_keeps_the_dense_steps_only(monkeypatch):
    monkeypatch.setattr(benchmark, "machine", lambda peak_n, dtype: {"machine": dtype})
    monkeypatch.setattr(benchmark, "ab_row", lambda mode, arch, workload, layer, *a: (
        arch, workload, layer))
    head, *rows = benchmark.ab_rows("impl", rounds=1, batch=2, steps=1)
    assert head == {"machine": "bfloat16"}  # both peaks
    assert rows == [("mnist", "cnn", None), ("mnist", "cae", 2), ("cifar10", "cnn", None),
                    ("cifar10", "cae", 2)]
    assert len(list(benchmark.ab_rows("dtype", 1, 2, 1))) == 1 + len(benchmark.ROWS)


def test_ab_seeds_times_each_path_and_count_once_and_gives_the_gain_over_one_seed(monkeypatch):
    """--ab=seeds: one compiled program per (conv_impl, 1 seed) and per (path, k > 1 seeds);
    the rate of all seeds together, and its gain over the path's one-seed program."""
    compiled = []

    def compile_step(workload, arch, layer, batch, steps, seeds, impl, seed_batching):
        compiled.append((impl, seeds, seed_batching if seeds > 1 else None))
        return (impl, seeds, seed_batching), (), 1.0

    # Per-seed rates: 100 img/s for one seed; k vmapped seeds at 60 each, k mapped at 30.
    def alternate(variants, images, rounds):
        rate = lambda key: 100.0 if ", 1)" in key else 60.0 if "vmap" in key else 30.0
        return {key: [rate(key)] * rounds for key in variants}

    monkeypatch.setattr(benchmark, "compile_step", compile_step)
    monkeypatch.setattr(benchmark, "alternate", alternate)
    row = benchmark.seeds_row("mnist", rounds=2, batch=4, steps=1, counts=(1, 2, 5))
    assert sorted(compiled) == sorted([("xla", 1, None), ("matmul", 1, None)] + [
        (impl, k, b) for impl, b in benchmark.SEED_PATHS.values() for k in (2, 5)])
    assert list(row["img_per_s"]) == list(benchmark.SEED_PATHS)
    assert row["img_per_s"]["xla vmap"] == {1: 100.0, 2: 120.0, 5: 300.0}
    assert row["gain"]["matmul vmap"] == {1: 1.0, 2: 1.2, 5: 3.0}
    assert row["gain"]["xla map"] == {1: 1.0, 2: 0.6, 5: 1.5}
    json.dumps(row)
    monkeypatch.setattr(benchmark, "machine", lambda peak_n, dtype: {"machine": dtype})
    monkeypatch.setattr(benchmark, "seeds_row", lambda arch, *a: arch)
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=")
    head, *rows = benchmark.ab_rows("seeds", rounds=1, batch=2, steps=1)
    assert head == {"machine": "float32", "xla_flags": "--xla_gpu_enable_command_buffer="}
    assert rows == ["mnist", "cifar10"]


def test_memory_reports_what_a_phase_holds_and_grows_with_the_seeds():
    one = benchmark.memory("cae", "mnist", 3, 16, 1)
    three = benchmark.memory("cae", "mnist", 3, 16, 3, seed_batching="vmap")
    assert set(one) >= {"argument_mb", "output_mb", "temp_mb"}
    assert one["argument_mb"] > 0 and three["argument_mb"] > one["argument_mb"]
