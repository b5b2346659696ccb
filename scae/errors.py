"""The project's exception types, and how a failure is told apart from its look-alikes.

Pipelines turn each type into one line on stderr and its own exit status:
:class:`InputError` 2, a divergence (``FloatingPointError``) 3, :class:`WriteError` 74,
:class:`Interrupted` 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP). Everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import signal

# errno values that say "this write cannot succeed by trying again": no space, over quota,
# a read-only file system, no permission.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EFBIG})
# The same faults as they appear in the text of errors that lost their errno on the way
# (orbax and tensorstore re-raise them as ValueError, RuntimeError or XlaRuntimeError).
_WRITE_TEXT = re.compile(
    r"no space left on device|disk quota exceeded|read-only file system|permission denied|"
    r"file too large|\bENOSPC\b|\bEDQUOT\b|\bEROFS\b|\bEACCES\b", re.IGNORECASE)
# tensorstore's form: "... [os_error_code='28']".
_ERRNO_TEXT = re.compile(r"os_error_code='?(\d+)")
# A path in such a text: tensorstore and orbax quote it, or put it after "file"/"path".
_PATH_TEXT = re.compile(r"""["'](/[^"']+)["']|(?:file|path|directory)[ :=]+(/\S+)""")


class InputError(ValueError):
    """Bad input from the user: a missing or corrupt file, a bad shape, key or value.

    The message names the file or key and says what was expected, in one line.
    """


class WriteError(OSError):
    """A write that cannot succeed: the disk is full, a quota is reached, the file system is
    read-only or the folder is not writable. ``path`` is the file (or folder) written."""

    def __init__(self, path: str | os.PathLike | None, cause: str):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"cannot write {self.path or 'the workdir'}: {cause}; earlier results "
                         "are intact, free space or fix the permissions and rerun to resume")


class Interrupted(BaseException):
    """A SIGINT, SIGTERM or SIGHUP arrived; raised at the next safe point (see
    :mod:`scae.interrupt`).

    A BaseException like KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int, where: str = ""):
        self.signum = signum
        self.where = where
        name = signal.Signals(signum).name if signum in set(signal.Signals) else str(signum)
        super().__init__(f"interrupted at {where or 'start-up'} ({name}); rerun the same "
                         "command to resume")

    @property
    def exit_status(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


def _chain(exc: BaseException):
    """``exc`` and every exception it was raised from or during, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def as_write_error(exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` that ``exc`` really is, or None.

    Looks through the ``__cause__``/``__context__`` chain for an OSError with a write errno
    (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), and, for errors that carry no errno (orbax and
    tensorstore wrap the OS's error in their own types), at the message text."""
    for e in _chain(exc):
        if isinstance(e, WriteError):
            return e
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return WriteError(e.filename, os.strerror(e.errno).lower())
    for e in _chain(exc):
        text = str(e)
        found = _WRITE_TEXT.search(text)
        code = _ERRNO_TEXT.search(text)
        if code and int(code.group(1)) in WRITE_ERRNOS:
            path = _PATH_TEXT.search(text)
            return WriteError(path and (path.group(1) or path.group(2)),
                              os.strerror(int(code.group(1))).lower())
        if found:
            path = _PATH_TEXT.search(text)
            path = (path.group(1) or path.group(2)) if path else None
            cause = found.group(0).lower()
            cause = {"enospc": "no space left on device", "edquot": "disk quota exceeded",
                     "erofs": "read-only file system",
                     "eacces": "permission denied"}.get(cause, cause)
            return WriteError(path, cause)
    return None


def is_device_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a real accelerator (or host) out-of-memory from XLA: a
    RESOURCE_EXHAUSTED runtime error that is not a file-system error in disguise (orbax
    reports a full disk as RESOURCE_EXHAUSTED too). Only this may trigger a fallback that
    trains seeds one at a time."""
    if as_write_error(exc) is not None:
        return False
    for e in _chain(exc):
        if isinstance(e, OSError):
            return False
        if type(e).__name__ == "XlaRuntimeError" or type(e).__module__.startswith("jax"):
            text = str(e)
            if "RESOURCE_EXHAUSTED" in text and re.search(
                    r"out of memory|allocat|memory", text, re.IGNORECASE):
                return True
    return False
