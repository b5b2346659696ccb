"""SIGINT and SIGTERM: stop within seconds at a consistent point, and never be lost.

Python runs a signal handler between two bytecodes of the main thread, wherever that is. An
exception raised there can land in a weakref callback or a ``__del__``, where Python prints
"Exception ignored" and carries on: that is how a Ctrl-C used to vanish and a run finish with
exit status 0. So the signal is first *recorded*, and every path out of a command consults
the record:

* the handler raises :class:`~scae.errors.Interrupted` at once (outside a :func:`deferred`
  block), which stops data loading, compilation and training within seconds;
* if that exception was swallowed, a watchdog thread re-delivers the signal every
  ``REDELIVER_S`` seconds until the command ends;
* the training driver calls :func:`check` between compiled chunks, and the command envelope
  calls it after the command's main returns, so a recorded signal always ends in exit status
  130 (SIGINT) or 143 (SIGTERM), never 0.

Inside a :func:`deferred` block (a checkpoint being saved) the first signal only records; the
block raises as it ends. A second signal raises at once, wherever the process is.
What is on disk stays consistent either way: every file is written under a temporary name
and renamed (see :mod:`scae.atomic`), so stopping anywhere is no worse than a kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from scae.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_S = 2.0  # how long a swallowed interruption may go unnoticed


class _State:
    def __init__(self):
        self.pending: int | None = None  # the first signal received
        self.where: str | None = None  # what the command was doing then
        self.at: str | None = None  # what the command says it is doing now (see :func:`at`)
        self.defer = 0  # depth of deferred() blocks
        self.redelivering = False  # the next handler call is the watchdog's
        self.done = False  # the envelope is ending the process: handle nothing more
        self.installed = False
        self.previous: dict[int, object] = {}
        self.watchdog: threading.Thread | None = None
        self.generation = 0  # install() count: an old watchdog ends when it changes


_state = _State()


def install() -> None:
    """Installs the SIGINT and SIGTERM handlers (main thread only; elsewhere a no-op) and
    forgets any earlier signal. Called once by the command envelope."""
    if threading.current_thread() is not threading.main_thread():
        return
    s = _state
    s.pending, s.where, s.at, s.defer, s.redelivering, s.done = None, None, None, 0, False, False
    s.generation += 1
    for signum in SIGNALS:
        previous = signal.signal(signum, _handler)
        if not s.installed:
            s.previous[signum] = previous
    s.installed = True


def uninstall() -> None:
    """Puts back the handlers :func:`install` replaced (for callers that run commands
    in-process, such as tests)."""
    s = _state
    s.done = True
    if s.installed and threading.current_thread() is threading.main_thread():
        for signum, previous in s.previous.items():
            signal.signal(signum, previous)
        s.installed, s.previous = False, {}


def pending() -> Interrupted | None:
    """The interruption received so far, if any, without raising it."""
    s = _state
    return None if s.pending is None else Interrupted(s.pending, s.where or s.at or "")


def check(where: str | None = None) -> None:
    """Raises :class:`~scae.errors.Interrupted` if SIGINT or SIGTERM arrived. The training
    driver calls this between compiled chunks; ``where`` (e.g. "layer 2, step 40/120") names
    the point in the message when the signal itself came at no named point."""
    s = _state
    if s.pending is not None:
        raise Interrupted(s.pending, s.where or where or s.at or "")


@contextlib.contextmanager
def at(where: str) -> Iterator[None]:
    """Names what the command does inside the block, for the "interrupted at ..." line."""
    s = _state
    outer, s.at = s.at, where
    try:
        yield
    finally:
        s.at = outer


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a first signal does not break (a second one does): the interruption is
    raised when the block ends. For short critical sections such as a checkpoint save."""
    s = _state
    s.defer += 1
    try:
        yield
    finally:
        s.defer -= 1
    if s.defer == 0:
        check()


def finish() -> None:
    """Called by the envelope once it is ending the process: no more raising, no more
    re-delivery."""
    _state.done = True


def _location(frame) -> str:
    """The innermost frame of this project's code, as 'file.py:function'."""
    while frame is not None:
        path = frame.f_code.co_filename
        parts = path.replace(os.sep, "/").split("/")
        if len(parts) >= 2 and parts[-2] in ("scae", "pipelines") \
                and not path.endswith("interrupt.py"):
            return f"{parts[-2]}/{parts[-1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return ""


def _handler(signum: int, frame) -> None:
    s = _state
    if s.done:
        return
    redelivered, s.redelivering = s.redelivering, False
    repeated = s.pending is not None and not redelivered
    if s.pending is None:
        s.pending = signum
        s.where = s.at or _location(frame) or "start-up"
        _start_watchdog()
    if s.defer and not repeated and not redelivered:
        return
    raise Interrupted(s.pending, s.where)


def _start_watchdog() -> None:
    s = _state
    if s.watchdog is not None and s.watchdog.is_alive():
        return
    main, generation = threading.main_thread().ident, s.generation

    def redeliver():
        while True:
            time.sleep(REDELIVER_S)
            if s.done or s.pending is None or s.generation != generation:
                return
            if s.defer:
                continue  # the block raises when it ends
            s.redelivering = True
            signal.pthread_kill(main, s.pending)

    s.watchdog = threading.Thread(target=redeliver, name="interrupt-redeliver", daemon=True)
    s.watchdog.start()
