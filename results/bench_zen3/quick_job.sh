#!/bin/bash
# The README's quick job from an empty compilation cache, timed, its resident memory sampled
# every 0.5 s and its log lines timestamped (seconds since start).
#   usage: results/bench_zen3/quick_job.sh OUTDIR [FLAG...]   (from the project root, in its
#          environment; CODE=/path/to/a/checkout runs that checkout's code instead; FLAGs go
#          to pipelines.compare, e.g. --config.model.compute_dtype=bfloat16)
set -u
out=$(realpath -m "$1"); rm -rf "$out"; mkdir -p "$out"
export JAX_COMPILATION_CACHE_DIR=$out/cache
cd "${CODE:-.}" && export PYTHONPATH=$PWD
t0=$(date +%s.%N)
( python -u -m pipelines.compare --config=configs/mnist.py:quick --workdir="$out/run" "${@:2}" 2>&1 | python -u -c "
import sys, time
t0 = time.time()
for line in sys.stdin:
    for part in line.replace('\r', '\n').split('\n'):
        if part.strip() and ('step/s' not in part and 's/step' not in part or '100%' in part):
            print(f'{time.time() - t0:7.1f} {part}', flush=True)
" > "$out/log.txt" ) &
sleep 1
pid=$(pgrep -f "pipelines.compare --config=configs/mnist.py:quick --workdir=$out/run" | head -1)
peak=0
while kill -0 "$pid" 2>/dev/null; do
  r=$(awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null)
  if [ -n "$r" ]; then echo "$(date +%s) $r" >> "$out/rss.txt"; [ "$r" -gt "$peak" ] && peak=$r; fi
  sleep 0.5
done
wait
echo "wall $(echo "$(date +%s.%N) - $t0" | bc) s, peak rss $((peak / 1024)) MB" | tee "$out/summary.txt"
