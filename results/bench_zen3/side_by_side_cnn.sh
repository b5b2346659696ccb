#!/bin/bash
# The CNN rows of shared/bench/side_by_side.sh: scae beside PyTorch eager and torch.compile,
# batch 128. Run from the project root in its environment: results/bench_zen3/side_by_side_cnn.sh
B=${B:-../shared/bench}
j() { python -c 'import json,sys; l=[x for x in sys.stdin.read().splitlines() if x.startswith("{")]; d=json.loads(l[-1]); print(round(d["img_per_s"]), round(d.get("gflop_per_s",0)))' 2>/dev/null || echo "err 0"; }
echo "cpu: $(lscpu | grep -o 'avx512[a-z_0-9]*\|avx2\|amx[a-z_0-9]*' | sort -u | tr '\n' ' ')"
echo "peak: $(python -m pipelines.benchmark --workload=cnn --steps=2 --repeats=1 --peak 2>/dev/null | grep '^{' | tail -1)"
echo "| arch | workload | scae img/s | scae GFLOP/s | torch eager | torch.compile | scae/eager | scae/compile |"
for arch in mnist cifar10; do
  parch=$arch; [ $arch = cifar10 ] && parch=cifar
  read s g < <(python -m pipelines.benchmark --workload=cnn --arch=$arch --batch=128 2>/dev/null | j)
  read t _ < <(python $B/peers.py --framework torch --workload cnn --arch $parch 2>/dev/null | j)
  read c _ < <(python $B/peers.py --framework torch-compile --workload cnn --arch $parch 2>/dev/null | j)
  echo "| $arch | cnn | $s | $g | $t | $c | $(echo "scale=2; $s / $t" | bc) | $(echo "scale=2; $s / $c" | bc) |"
done
