"""Files written whole or not at all: a temporary file in the same folder, then a rename, so
a kill never leaves a half-written record, table, figure or config behind. What a kill leaves
instead, a stray temporary file, :func:`sweep` removes on the next run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

TMP_SUFFIX = ".tmp"
ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's own temporary checkpoint folders


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write; when the block ends without an
    exception, moves it over ``path`` in one step. On an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, newline="")


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Rewrites ``path`` with one JSON object per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files and orbax checkpoint folders that killed writes left in
    ``folder`` (recursively); returns them. Only safe while no other process writes there."""
    removed = []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
            p.unlink(missing_ok=True)
        elif p.is_dir() and ORBAX_TMP in p.name:
            shutil.rmtree(p, ignore_errors=True)
        else:
            continue
        removed.append(p)
    return removed
