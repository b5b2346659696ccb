#!/bin/bash
# One short step (bf16 CAE layer 3 at CIFAR-10 size, 11 ms a batch) in N fresh processes, then
# in 3 processes pinned to one core (taskset -c 0): img/s and the steal ticks /proc/stat
# counted during each run.
#   usage: bash results/bench_zen4/process_spread.sh N   (from the project root, in its environment)
set -u
run() {
  s0=$(awk '/^cpu /{print $9}' /proc/stat)
  r=$("$@" python -m pipelines.benchmark --workload=cae --layer=3 --arch=cifar10 --batch=128 \
      --dtype=bfloat16 2>/dev/null | grep '^{' | python -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])')
  echo "$r img/s, steal ticks $(( $(awk '/^cpu /{print $9}' /proc/stat) - s0 ))"
}
for i in $(seq "${1:-10}"); do echo "both cores: $(run env)"; done
for i in 1 2 3; do echo "one core:   $(run taskset -c 0)"; done
