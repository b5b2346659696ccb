"""Worker time per test file, and the slowest tests, from a pytest --durations=0 log.

  python results/bench_zen3/suite_files.py LOG.txt
"""

import collections
import re
import sys


def main(path: str) -> None:
    per_test, per_file = [], collections.Counter()
    for line in open(path):
        m = re.match(r"\s*([\d.]+)s (call|setup|teardown)\s+(\S+)", line)
        if m:
            seconds, name = float(m.group(1)), m.group(3)
            per_test.append((seconds, m.group(2), name))
            per_file[name.split("::")[0]] += seconds
    print(f"worker time: {sum(per_file.values()):.0f} s over {len(per_file)} files")
    for name, seconds in per_file.most_common(12):
        print(f"{seconds:7.1f} s  {name}")
    print("slowest:")
    for seconds, when, name in sorted(per_test, reverse=True)[:12]:
        print(f"{seconds:7.1f} s  {when:5s} {name}")


if __name__ == "__main__":
    main(sys.argv[1])
