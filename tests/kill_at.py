"""Runs ``python -m MODULE ARGS...`` and SIGKILLs it at an exact file-system moment.

  python tests/kill_at.py EVENT REGEX N MODULE [ARGS...]

A Python audit hook watches the events ``os.rename`` (also raised by ``os.replace``),
``open`` and ``os.mkdir``; at the N-th event named EVENT whose path matches REGEX the process
kills itself with SIGKILL, before the operation happens. This puts a kill exactly inside a
checkpoint or results-file write, e.g. once a temporary file is complete but not yet renamed,
which a timer could only hit by luck. Before dying it prints ``killed at EVENT PATH`` on
stderr. Test use only.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys
from pathlib import Path

# This checkout, not an installed copy of the project: the script runs as a file, so its own
# folder (tests/) heads sys.path, and an editable install may point at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    event, pattern, nth, module, *args = sys.argv[1:]
    regex, nth, seen = re.compile(pattern), int(nth), 0
    report = os.dup(2)  # stderr as it is now: the command may point descriptor 2 elsewhere

    def hook(name: str, hook_args: tuple) -> None:
        nonlocal seen
        if name != event or not hook_args:
            return
        try:
            path = os.fsdecode(hook_args[0])
        except TypeError:  # a file descriptor, not a path
            return
        if regex.search(path):
            seen += 1
            if seen == nth:
                os.write(report, f"\nkilled at {name} {path}\n".encode())
                os.kill(os.getpid(), signal.SIGKILL)

    sys.argv = [module, *args]
    sys.addaudithook(hook)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
