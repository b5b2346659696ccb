#!/bin/bash
# XLA CPU flags A/B on one training step, interleaved over ROUNDS rounds (one process per run).
#   usage: results/bench_zen3/xla_flags.sh WORKLOAD LAYER ARCH ROUNDS   (from the project root)
W=$1; L=$2; A=$3; R=${4:-2}
FLAGS=(
""
"--xla_cpu_experimental_ynn_fusion_type=+eltwise"
"--xla_cpu_experimental_ynn_fusion_type=+reduce"
"--xla_cpu_experimental_ynn_fusion_type=-dot"
"--xla_cpu_experimental_ynn_fusion_type=+individual_dot"
"--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
"--xla_cpu_enable_concurrency_optimized_scheduler=true"
"--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY --xla_cpu_experimental_ynn_fusion_type=-dot"
)
for r in $(seq "$R"); do
  for f in "${FLAGS[@]}"; do
    out=$(XLA_FLAGS="$f" SCAE_COMPILATION_CACHE=0 python -m pipelines.benchmark --workload="$W" \
          --layer="$L" --arch="$A" --steps=10 --repeats=3 2>&1 | grep '^{' | tail -1)
    echo "$r|$f|$(echo "$out" | python -c 'import json,sys; print(json.loads(sys.stdin.read() or "{}").get("img_per_s"))')"
  done
done
