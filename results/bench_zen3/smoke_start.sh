#!/bin/bash
# The smoke compare (the command most of the test suite runs) with a warm compilation cache,
# wall time and peak resident memory (/usr/bin/time), for each checkout in CODES, interleaved
# over ROUNDS rounds. Each checkout first fills its own cache with one unmeasured run.
#   usage: CODES="/path/a /path/b" results/bench_zen3/smoke_start.sh ROUNDS
set -u
rounds=${1:-2}
tmp=$(mktemp -d)
for code in $CODES; do  # fill each checkout's cache
  ( cd "$code" && JAX_COMPILATION_CACHE_DIR=$tmp/cache_$(basename "$code") PYTHONPATH=$PWD \
    python -m pipelines.compare --config=configs/mnist.py:smoke --workdir="$tmp/fill" \
    > /dev/null 2>&1; rm -rf "$tmp/fill" )
done
for r in $(seq "$rounds"); do
  for code in $CODES; do
    ( cd "$code" && JAX_COMPILATION_CACHE_DIR=$tmp/cache_$(basename "$code") PYTHONPATH=$PWD \
      /usr/bin/time -f "round $r $(git -C "$code" describe --always --dirty) %e s %M KB" \
      python -m pipelines.compare --config=configs/mnist.py:smoke --workdir="$tmp/w" \
      2>&1 >/dev/null | tail -1; rm -rf "$tmp/w" )
  done
done
rm -rf "$tmp"
