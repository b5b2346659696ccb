#!/bin/bash
# Seeds in one program, vmapped or mapped (scae.train.driver.over_seeds): the quick job's fine-tuning
# step (the CNN, 3 seeds x 64 images), the per-seed stacks' CAE layers 1 and 2 (3 seeds x 128)
# and the quick job's validation evaluation (3 seeds x 1000 images), ROUNDS interleaved rounds.
#   usage: bash results/bench_zen3/seed_batching_ab.sh [ROUNDS]   (project root, its environment)
set -eu
export PYTHONPATH=$PWD
for round in $(seq "${1:-2}"); do
  echo "# round $round"
  for mode in map vmap; do
    for w in "cnn 1 64 15" "cae 1 128 10" "cae 2 128 10"; do
      set -- $w
      python -m pipelines.benchmark --workload=$1 --layer=$2 --batch=$3 --steps=$4 --seeds=3 \
        --seed_batching=$mode --workdir=/tmp/seed_batching_ab | tail -1
    done
    python results/bench_zen3/seed_batching_eval.py $mode
  done
done
