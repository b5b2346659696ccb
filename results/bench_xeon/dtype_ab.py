"""fp32 against bf16 matmul operands (config.model.compute_dtype), every training step of
pipelines.benchmark at both sizes, compiled side by side in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128), so that the machine's drift
hits both alike. Prints the fp32 and bf16 matmul peaks (4096^2), then per step the medians,
the bf16/fp32 ratio and each round's ratio.

    PYTHONPATH=. python results/bench_xeon/dtype_ab.py ROUNDS
"""
import statistics
import sys

from pipelines import benchmark as bm
from scae import ops


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps, batch = 5, 128
    print(f"cpu: {bm.cpu_model()}; {' '.join(bm.vector_extensions())}", flush=True)
    print(f"peak GFLOP/s (4096^2): float32 {bm.matmul_peak():.0f}, "
          f"bfloat16 {bm.matmul_peak(dtype='bfloat16'):.0f}", flush=True)
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


if __name__ == "__main__":
    main()
