"""Files written whole or not at all: a temporary file in the same folder, then a rename, so
a kill never leaves a half-written record, table, figure or config behind. What a kill leaves
instead, a stray temporary file, a folder half moved to the trash or orbax's partial
checkpoint folder, :func:`sweep` removes on the next run.

Records are JSON lines; :func:`read_jsonl` drops a torn last line (the unit it described is
redone) and refuses damage anywhere else.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from scae.errors import InputError, WriteError, as_write_error

TMP_SUFFIX = ".tmp"
# Whether this process writes files. In a run of several processes (scae.train.parallel)
# process 0 alone does: the others compute the same values, and every write of theirs
# (records, tables, figures, machine.json), removal and sweep is skipped here, at the root.
_writer = True


def set_writer(writes: bool) -> None:
    """Makes this process write files (the default) or skip every write: set once at start-up
    from its place in a multi-process run (:func:`scae.train.parallel.initialize_distributed`)."""
    global _writer
    _writer = bool(writes)


def writer() -> bool:
    """Whether this process writes files (see :func:`set_writer`)."""
    return _writer
ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's own temporary checkpoint folders
TRASH_PREFIX = ".trash-"  # folders being deleted (see remove_tree)


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write; when the block ends without an
    exception, moves it over ``path`` in one step. On an exception it is removed.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the
    umask), not mkstemp's private 0600. A write that fails for lack of space, quota or
    permission raises :class:`~scae.errors.WriteError` naming ``path``.
    """
    path = Path(path)
    if not _writer:  # the caller's write goes to a scratch file that is then dropped
        with tempfile.TemporaryDirectory(prefix="scae-skipped-") as scratch:
            yield Path(scratch) / path.name
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            os.fchmod(fd, 0o666 & ~umask())
        finally:
            os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        error = as_write_error(e) if isinstance(e, Exception) else None
        if error is not None and not isinstance(e, WriteError):
            raise WriteError(path, error.cause) from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, newline="")


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Rewrites ``path`` with one JSON object per line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file; an absent file has none.

    A last line that is torn (cut short by a crash, or undecodable) is dropped: the unit of
    work it recorded counts as not done and is redone. A damaged line anywhere else, or a line
    that is not a JSON object, raises :class:`~scae.errors.InputError` naming the file and
    the line, since dropping it would silently lose finished work.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise InputError(f"{path}: expected a JSON-lines file, found a folder") from None
    lines = raw.split(b"\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for n, (number, line) in enumerate(numbered):
        last = n == len(numbered) - 1
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if last:
                break  # torn by a crash mid-append: that unit is redone
            raise InputError(f"{path}: line {number} is not valid JSON ({e}); delete that line "
                             "(its unit is redone) or rerun with --overwrite") from None
        if not isinstance(record, dict):
            if last:
                break
            raise InputError(f"{path}: line {number}: expected a JSON object, got "
                             f"{type(record).__name__}")
        records.append(record)
    return records


def read_json(path: str | os.PathLike, default=None):
    """The JSON value in ``path``, or ``default`` when the file is absent or torn (a record
    whose unit is then redone)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
    except (UnicodeDecodeError, ValueError):
        return default


def remove_tree(path: str | os.PathLike) -> None:
    """Deletes the folder (or file) ``path`` so that a kill at any moment leaves either all
    of it or none of it in place: it is first renamed to a hidden trash name beside itself (one
    atomic step), then deleted. What a kill leaves in the trash, :func:`sweep` removes."""
    path = Path(path)
    if not _writer or (not path.exists() and not path.is_symlink()):
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def sweep_beside(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files that killed writes of ``path`` (:func:`replacing`) left
    beside it, and nothing else of its folder: for a file a command writes outside a workdir
    (an ``--output``, a README), whose folder other programs share."""
    path = Path(path)
    removed = []
    if not _writer:
        return removed
    for p in sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}")):
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Removes what killed writes left in ``folder`` (recursively): temporary files and
    folders (a publish's staging folder), folders half moved to the trash and orbax's partial
    checkpoint folders; returns them. Only safe while no other process writes there (the
    caller holds the workdir's lock). Every command that writes sweeps what it writes into."""
    removed = []
    if not _writer:
        return removed
    for root, dirs, files in os.walk(folder):
        root = Path(root)
        for name in sorted(files):
            if name.startswith(".") and (name.endswith(TMP_SUFFIX) or
                                         name.startswith(TRASH_PREFIX)):
                (root / name).unlink(missing_ok=True)
                removed.append(root / name)
        for name in sorted(dirs):
            if ORBAX_TMP in name or name.startswith(TRASH_PREFIX) or (
                    name.startswith(".") and name.endswith(TMP_SUFFIX)):
                shutil.rmtree(root / name, ignore_errors=True)
                removed.append(root / name)
        dirs[:] = sorted(d for d in dirs if (root / d).is_dir())  # don't walk removed ones
    return removed
