#!/bin/bash
# What every command costs before it does any work: the wall time of one that stops at once
# with a bad-input error (imports, flag parsing, the one-line error, exit), for each checkout
# in CODES, interleaved over ROUNDS rounds of 3 runs each.
#   usage: CODES="/path/a /path/b" results/bench_zen3/command_start.sh ROUNDS
set -u
rounds=${1:-2}
for r in $(seq "$rounds"); do
  for code in $CODES; do
    for i in 1 2 3; do
      ( cd "$code" && PYTHONPATH=$PWD /usr/bin/time -f "round $r $(git -C "$code" describe \
        --always --dirty) %e s %M KB" python -m pipelines.pretrain \
        --config=configs/mnist.py:smoke 2>&1 >/dev/null | tail -1 )
    done
  done
done
