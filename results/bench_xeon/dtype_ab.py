"""fp32 against bf16 matmul operands (config.model.compute_dtype), every training step of
pipelines.benchmark at both sizes, compiled side by side in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128), so that the machine's drift
hits both alike. Prints the fp32 and bf16 matmul peaks, then per step the medians, the
bf16/fp32 ratio and each round's ratio.

With ``impl``, the dense steps (CNN, CAE layer 2) three ways instead: float32 with the default
convolutions (Winograd for the 5x5 layers), float32 on patch matmuls (conv_impl='matmul') and
bfloat16 on patch matmuls, the one form in which every convolution's products are bf16; per
step the medians and the ratios to each float32 form.

    PYTHONPATH=. python results/bench_xeon/dtype_ab.py ROUNDS [impl]
"""
import statistics
import sys

from pipelines import benchmark as bm
from scae.models import ops

# The impl mode's variants: name -> (conv_impl, compute dtype).
IMPL_VARIANTS = {"fp32 auto": ("auto", "float32"), "fp32 matmul": ("matmul", "float32"),
                 "bf16 matmul": ("matmul", "bfloat16")}


def dtypes(rounds: int, steps: int, batch: int) -> None:
    for arch, workload, layer in bm.ROWS:
        variants = {}
        for dtype in ops.COMPUTE_DTYPES:
            fn, args, flop = bm.compile_step(workload, arch, layer or 1, batch, steps, dtype=dtype)
            variants[dtype] = (fn, args)
        rates = bm.alternate(variants, steps * batch, rounds)
        a, b = statistics.median(rates["float32"]), statistics.median(rates["bfloat16"])
        ratios = [y / x for x, y in zip(rates["float32"], rates["bfloat16"])]
        name = workload if workload == "cnn" else f"cae {layer}"
        print(f"{arch:8s} {name:6s} float32 {a:7.1f} img/s ({a * flop / 1e9:5.0f} GFLOP/s)  "
              f"bfloat16 {b:7.1f} img/s ({b * flop / 1e9:5.0f} GFLOP/s)  "
              f"x{statistics.median(ratios):.2f} (rounds: "
              + " ".join(f"{r:.2f}" for r in ratios) + ")", flush=True)


def impls(rounds: int, steps: int, batch: int) -> None:
    for arch, workload, layer in [r for r in bm.ROWS if r[1] == "cnn" or r[2] == 2]:
        variants = {}
        for name, (impl, dtype) in IMPL_VARIANTS.items():
            fn, args, _ = bm.compile_step(workload, arch, layer or 1, batch, steps,
                                          impl=impl, dtype=dtype)
            variants[name] = (fn, args)
        rates = {k: statistics.median(v) for k, v in
                 bm.alternate(variants, steps * batch, rounds).items()}
        label = workload if workload == "cnn" else f"cae {layer}"
        print(f"{arch:8s} {label:6s} " + "  ".join(f"{k} {v:7.1f}" for k, v in rates.items())
              + f"  img/s;  bf16/fp32 matmul x{rates['bf16 matmul'] / rates['fp32 matmul']:.2f}"
              f"  bf16 matmul/fp32 auto x{rates['bf16 matmul'] / rates['fp32 auto']:.2f}",
              flush=True)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mode = impls if sys.argv[2:] == ["impl"] else dtypes
    print(f"cpu: {bm.cpu_model()}; {' '.join(bm.vector_extensions())}", flush=True)
    print(f"peak GFLOP/s (4096^2): float32 {bm.matmul_peak():.0f}, "
          f"bfloat16 {bm.matmul_peak(dtype='bfloat16'):.0f}", flush=True)
    mode(rounds, steps=5, batch=128)


if __name__ == "__main__":
    main()
