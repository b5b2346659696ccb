#!/bin/bash
# The GPU records in one call of a lent machine: the machine, every training step of
# pipelines.benchmark in fp32 and bf16, then a comparison preset (the MNIST paper protocol by
# default), timed and stopped by SIGTERM before LIMIT seconds so that a second call resumes
# it; its records come back packed in one file.
#   usage, from the project root on the GPU machine:
#     bash results/bench_h100/gpu_run.sh OUTDIR [PRESET] [LIMIT]    (PRESET: paper, quick, smoke)
#   OUTDIR gets machine.txt; benchmark_fp32.jsonl, benchmark_bf16.jsonl and seeds_cnn.jsonl
#   (on the first call only); compare_log.txt, summary.txt and mnist_PRESET.tgz (the workdir
#   without its checkpoints:
#   `tar xzf` it and `python -m pipelines.publish --workdir=mnist_PRESET --out=results/...`).
#   The workdir is runs/mnist_PRESET, kept between calls on a warm machine.
# Python packages the project needs beyond that machine's image (ml_collections) travel as
# wheels in .whl/ (see the device notes); they are installed when present.
set -uo pipefail
bad() { echo "gpu_run.sh: $1 (usage: gpu_run.sh OUTDIR [paper|quick|smoke] [LIMIT seconds])" >&2; exit 2; }
[ $# -ge 1 ] && [ -n "$1" ] || bad "OUTDIR: required"
out=$(realpath -m "$1"); preset=${2:-paper}; limit=${3:-540}
case $preset in paper|quick|smoke) ;; *) bad "PRESET: '$preset' is not paper, quick or smoke" ;; esac
[[ $limit =~ ^[0-9]+$ ]] || bad "LIMIT: '$limit' is not a whole number of seconds"
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax; print(jax.__version__, jax.devices())"; } > "$out/machine.txt" 2>&1
work=runs/mnist_$preset
if [ ! -d "$work" ]; then  # the benchmark once per machine, before the comparison starts
  python3 -m pipelines.benchmark --all --steps=20 --repeats=3 > "$out/benchmark_fp32.jsonl" 2>/dev/null
  python3 -m pipelines.benchmark --all --steps=20 --repeats=3 --dtype=bfloat16 \
    > "$out/benchmark_bf16.jsonl" 2>/dev/null
  # The CNN step of 10 seeds in one program: XLA's convolutions (grouped over the vmapped
  # seeds) against patch matmuls (batched GEMMs), vmapped or one seed after another.
  for impl in xla matmul; do for sb in vmap map; do
    python3 -m pipelines.benchmark --workload=cnn --seeds=10 --steps=20 --repeats=3 \
      --conv_impl=$impl --seed_batching=$sb 2>/dev/null | grep '^{'
  done; done > "$out/seeds_cnn.jsonl"
fi
left=$(( limit - ($(date +%s) - t0) ))
if [ "$left" -lt 30 ]; then  # (timeout 0 would mean no limit)
  echo "compare not started: $left s left of the $limit s limit; run again" | tee "$out/summary.txt"
  exit 0
fi
t1=$(date +%s)
timeout -s TERM -k 60 "$left" python3 -m pipelines.compare --config=configs/mnist.py:$preset \
  --workdir="$work" > "$out/compare_log.txt" 2>&1
rc=$?
echo "compare rc $rc, $(( $(date +%s) - t1 )) s (rc 124: stopped at the limit, and the same call again resumes it)" \
  | tee "$out/summary.txt"
tar czf "$out/mnist_$preset.tgz" --exclude=ckpt -C runs "mnist_$preset"
