"""The dense steps (CNN, CAE layer 2) three ways, compiled in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128): float32 with the default
convolutions (Winograd for the 5x5 layers), float32 on patch matmuls (conv_impl='matmul') and
bfloat16 on patch matmuls, the one form in which every convolution's products are bf16.
Prints the matmul peaks, then per step the medians and the ratios to each float32 form.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. python results/bench_zen4/dtype_impl_ab.py ROUNDS
"""
import statistics
import sys

from pipelines import benchmark as bm

VARIANTS = {"fp32 auto": ("auto", "float32"), "fp32 matmul": ("matmul", "float32"),
            "bf16 matmul": ("matmul", "bfloat16")}


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps, batch = 5, 128
    print(f"cpu: {bm.cpu_model()}; {' '.join(bm.vector_extensions())}", flush=True)
    print(f"peak GFLOP/s (4096^2): float32 {bm.matmul_peak():.0f}, "
          f"bfloat16 {bm.matmul_peak(dtype='bfloat16'):.0f}", flush=True)
    for arch, workload, layer in [r for r in bm.ROWS if r[1] == "cnn" or r[2] == 2]:
        variants = {}
        for name, (impl, dtype) in VARIANTS.items():
            fn, args, flop = bm.compile_step(workload, arch, layer or 1, batch, steps,
                                             impl=impl, dtype=dtype)
            variants[name] = (fn, args)
        rates = {k: statistics.median(v) for k, v in
                 bm.alternate(variants, steps * batch, rounds).items()}
        label = workload if workload == "cnn" else f"cae {layer}"
        print(f"{arch:8s} {label:6s} " + "  ".join(f"{k} {v:7.1f}" for k, v in rates.items())
              + f"  img/s;  bf16/fp32 matmul x{rates['bf16 matmul'] / rates['fp32 matmul']:.2f}"
              f"  bf16 matmul/fp32 auto x{rates['bf16 matmul'] / rates['fp32 auto']:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
