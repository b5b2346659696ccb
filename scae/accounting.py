"""Where a command's wall time goes: start-up, data, compilation, training steps, evaluation,
checkpoints, figures and tables, and the rest.

Code marks its work with :func:`part`; time inside nested parts goes to the innermost one, so
the parts never count a second twice and, with ``other`` (what no part claimed), add up to the
wall time since the process began (:func:`breakdown`). A GPU study is judged by the share of
``training steps``: everything else is what a short lease cannot afford.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

PARTS = ("start-up and imports", "data loading and preprocessing", "compilation",
         "training steps", "evaluation", "checkpoints", "figures and tables",
         # the work around the steps: a phase's initial state and memory release, the batch
         # order and finiteness checks between compiled chunks, a stack's cached layer inputs,
         # the frozen arm's features
         "phase set-up", "between chunks (batch order, finiteness checks)", "layer inputs",
         "frozen features")
OTHER = "other"

_origin = time.perf_counter()  # this module is imported before the heavy imports
_parts: dict[str, float] = {}
_open: list[list] = []  # [name, seconds claimed by parts nested inside it]


def _process_age() -> float:
    """Seconds since the process started (Linux), or 0 where that cannot be read: the
    interpreter's own start-up, before this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return max(0.0, float(f.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


_before_import = _process_age()


@contextlib.contextmanager
def part(name: str) -> Iterator[None]:
    """Counts the time inside the block as ``name`` (less the parts nested inside it)."""
    start = time.perf_counter()
    _open.append([name, 0.0])
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _, nested = _open.pop()
        _parts[name] = _parts.get(name, 0.0) + elapsed - nested
        if _open:
            _open[-1][1] += elapsed


def started() -> None:
    """Marks the end of start-up: the time so far (the interpreter, the imports, the flags)
    is ``start-up and imports``."""
    if "start-up and imports" not in _parts:
        _parts["start-up and imports"] = _before_import + time.perf_counter() - _origin


def wall_time() -> float:
    """Seconds since the process began."""
    return _before_import + time.perf_counter() - _origin


def breakdown() -> dict[str, float]:
    """Seconds per part so far, ``other`` last: they add up to :func:`wall_time`."""
    total = wall_time()
    out = {name: round(_parts[name], 3) for name in PARTS if name in _parts}
    out.update({name: round(v, 3) for name, v in _parts.items() if name not in out})
    out[OTHER] = round(max(0.0, total - sum(_parts.values())), 3)
    return out


def table(parts: dict[str, float]) -> str:
    """``parts`` (:func:`breakdown`) as a Markdown table with each part's share."""
    total = sum(parts.values()) or 1.0
    rows = [f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f}% |"
            for name, seconds in parts.items()]
    return "\n".join(["| where the wall time went | s | share |", "| --- | ---: | ---: |", *rows,
                      f"| total | {sum(parts.values()):.1f} | 100% |"])


def reset() -> None:
    """Forgets every part (for a process that runs several jobs, such as the tests)."""
    global _origin, _before_import
    _parts.clear()
    _open.clear()
    _origin, _before_import = time.perf_counter(), 0.0
