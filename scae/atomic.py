"""Files written whole or not at all: a temporary file in the same folder, then a rename, so
a kill never leaves a half-written record, table or config behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Rewrites ``path`` with one JSON object per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
