#!/bin/bash
# The test suite as the README runs it (python -m pytest -n 2), timed, with every test's
# duration, then the worker time per file (suite_files.py). Run it on a checkout with nothing
# beside it (no ../shared/data, as in CI: 6 tests skip) and nothing else on the machine.
#   usage: results/bench_zen3/suite_time.sh CHECKOUT OUT.txt   (in the project's environment)
set -u
out=$(realpath -m "$2")
here=$(dirname "$(realpath "$0")")
cd "$1" || exit 2
git log --oneline -1 > "$out"
/usr/bin/time -f '%e s wall, %U s user, %S s sys' python -m pytest -n 2 -q --durations=0 \
  -p no:cacheprovider >> "$out" 2>&1
python "$here/suite_files.py" "$out" | tee -a "$out"
