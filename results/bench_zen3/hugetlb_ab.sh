#!/bin/bash
# Training steps without and with glibc's hugetlb tunable (transparent huge pages for malloc's
# large blocks), each in its own process, interleaved over ROUNDS rounds (img/s, MNIST size).
#   usage: results/bench_zen3/hugetlb_ab.sh [ROUNDS]   (from the project root, in its environment)
# SCAE_HUGE_PAGES=0 keeps the commands from setting the tunable themselves (pipelines.common).
for r in $(seq "${1:-3}"); do for t in "" "glibc.malloc.hugetlb=1"; do line="$r [$t]"
  for wl in "--workload=cnn" "--workload=cae --layer=1" "--workload=cae --layer=2"; do
    line="$line | $wl $(SCAE_HUGE_PAGES=0 GLIBC_TUNABLES=$t python -m pipelines.benchmark $wl --arch=mnist --steps=10 --repeats=3 2>/dev/null | grep '^{' | python -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["img_per_s"])')"
  done; echo "$line"
done; done
