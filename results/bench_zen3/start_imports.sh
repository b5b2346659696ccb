#!/bin/bash
# What a command's start imports: pipelines.compare with everything under it, and
# tensorflow_datasets alone (which bare 'mnist' imported before data._tfds_state looked at the
# file system first). Cumulative seconds from python -X importtime, 3 rounds each.
#   usage: results/bench_zen3/start_imports.sh   (from the project root, in its environment)
for r in 1 2 3; do
  for m in pipelines.compare tensorflow_datasets; do
    python -X importtime -c "import $m" 2>&1 | awk -v m="$m" -v r="$r" -F'|' \
      '$3 ~ " "m"$" {gsub(/ /, "", $2); printf "round %s %s %.2f s\n", r, m, $2 / 1e6}'
  done
done
