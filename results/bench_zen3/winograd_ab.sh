#!/bin/bash
# conv_impl=matmul (patches x kernel) against conv_impl=winograd (scae.models.winograd for the 5x5
# layers over >= 16 maps), each step in its own process, ROUNDS rounds (img/s, analytic GFLOP/s).
#   usage: results/bench_zen3/winograd_ab.sh [ROUNDS]   (from the project root, in its environment)
for r in $(seq "${1:-2}"); do for impl in matmul winograd; do
  for wl in "--workload=cnn" "--workload=cae --layer=2" "--workload=cae --layer=3"; do for a in mnist cifar10; do
    echo "$r $impl $wl $a $(python -m pipelines.benchmark $wl --arch=$a --conv_impl=$impl --steps=10 --repeats=3 2>&1 | grep '^{' | python -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["img_per_s"], d.get("gflop_per_s"))' 2>&1 | tail -1)"
  done; done
done; done
