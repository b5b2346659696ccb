"""SIGINT, SIGTERM and SIGHUP: stop within seconds at a consistent point, and never be lost.

Python runs a signal handler between two bytecodes of the main thread, wherever that is. An
exception raised there can land in a weakref callback or a ``__del__``, where Python prints
"Exception ignored" and carries on (that is how a Ctrl-C used to vanish and a run finish
with exit status 0), or inside a callback that jax's C++ code made, which can crash the
process. So the handler never raises. It records the signal, and:

* the training driver calls :func:`check` between compiled chunks (and the command envelope
  before it starts and after the command's main returns), which raises
  :class:`~scae.errors.Interrupted`: the envelope prints one line and exits with 130 (SIGINT),
  143 (SIGTERM) or 129 (SIGHUP: the terminal closed, whose default action would end the
  process in the middle of a write and say nothing);
* if no :func:`check` comes within ``GRACE_S`` seconds (data loading, compilation, code
  without check points), a watchdog thread prints the same line and ends the process with the
  same status. That is as safe as a kill, which every write already survives: files are
  written under a temporary name and renamed (:mod:`scae.atomic`), checkpoints by orbax's
  rename, and the next run sweeps what is left. It waits for a :func:`deferred` block (a
  checkpoint save) to end first;
* a second signal ends the process at once, the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence

from scae.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 4.0  # how long the process may run on after a signal before it is ended
MAX_DEFER_S = 60.0  # the longest a deferred block holds the end back


class _State:
    def __init__(self):
        self.pending: int | None = None  # the first signal received
        self.where: str | None = None  # what the command was doing then
        self.at: str | None = None  # what the command says it is doing now (see :func:`at`)
        # The last check point passed ("layer 2, step 40/120"): names the moment of a signal
        # that arrives between check points (a checkpoint save, an evaluation), where the
        # Python frame would only name a function.
        self.progress: str | None = None
        self.defer = 0  # depth of deferred() blocks
        self.done = False  # the envelope is ending the process: the watchdog stands down
        self.installed = False
        self.early = False  # early() is in force
        self.previous: dict[int, object] = {}
        self.generation = 0  # install() count: an older watchdog stands down
        self.stderr_fd: int | None = None  # stderr as installed (a save may mute descriptor 2)
        # Called with (status, line) before the watchdog ends the process (the other processes
        # of a multi-process run end too: scae.train.parallel).
        self.on_end = None


_state = _State()


def early(received: Sequence[int] = ()) -> None:
    """Records the signals of :data:`SIGNALS` from a command's first moment (before the slow
    imports) until :func:`install`, which keeps what was recorded. ``received``: the signals a
    simpler handler recorded before this module could be imported."""
    if threading.current_thread() is not threading.main_thread():
        return
    _keep_stderr()
    _state.early = True
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    for signum in received:
        _handler(signum, None)


def install() -> None:
    """Installs the handlers of :data:`SIGNALS` (main thread only; elsewhere a no-op). Forgets
    an earlier signal unless :func:`early` recorded it. Called once by the command envelope."""
    if threading.current_thread() is not threading.main_thread():
        return
    s = _state
    _keep_stderr()
    if not s.early:
        s.pending, s.where = None, None
    s.early, s.at, s.progress, s.defer, s.done = False, None, None, 0, False
    s.generation += 1
    for signum in SIGNALS:
        previous = signal.signal(signum, _handler)
        if not s.installed:
            s.previous[signum] = previous
    s.installed = True
    if s.pending is not None:
        _start_watchdog()


def _keep_stderr() -> None:
    if _state.stderr_fd is None:
        try:
            _state.stderr_fd = os.dup(2)
        except OSError:
            pass


def uninstall() -> None:
    """Stands the watchdog down and puts back the handlers :func:`install` replaced (for
    callers that run commands in-process, such as tests)."""
    s = _state
    s.done = True
    s.pending, s.where, s.progress = None, None, None  # what this command received ends
    # with it
    if s.installed and threading.current_thread() is threading.main_thread():
        for signum, previous in s.previous.items():
            signal.signal(signum, previous)
        s.installed, s.previous = False, {}


def pending() -> Interrupted | None:
    """The interruption received so far, if any, without raising it."""
    s = _state
    return None if s.pending is None else Interrupted(s.pending, s.where or s.at or "")


def check(where: str | None = None) -> None:
    """Raises :class:`~scae.errors.Interrupted` if a signal of :data:`SIGNALS` arrived. The
    training driver calls this between compiled chunks, with ``where`` such as "layer 2, step
    40/120" for the message; a signal that arrives before the next check point is reported at
    that place too."""
    s = _state
    if where is not None:
        s.progress = where
    if s.pending is not None:
        raise Interrupted(s.pending, where or s.at or s.where or "")


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
    """A block the watchdog lets finish (up to ``MAX_DEFER_S``) before ending the process:
    a checkpoint save. A recorded interruption is raised when the block ends."""
    s = _state
    s.defer += 1
    try:
        yield
    finally:
        s.defer -= 1
    if s.defer == 0:
        check()


def finish() -> None:
    """Called by the envelope once it is ending the process itself: the watchdog stands down."""
    _state.done = True


def _location(frame) -> str:
    """The innermost frame of this project's code, as 'scae/train/file.py:function' (only
    where no check point has been passed yet: start-up)."""
    while frame is not None:
        parts = frame.f_code.co_filename.replace(os.sep, "/").split("/")
        for top in ("scae", "pipelines"):
            if top in parts[:-1]:
                rel = "/".join(parts[len(parts) - 1 - parts[::-1].index(top):])
                if rel != "scae/interrupt.py":
                    return f"{rel}:{frame.f_code.co_name}"
                break
        frame = frame.f_back
    return ""


def _handler(signum: int, frame) -> None:
    s = _state
    if s.pending is not None:  # asked twice: end now
        _end(Interrupted(s.pending, s.at or s.where or ""))
    s.pending = signum
    s.where = s.at or s.progress or _location(frame) or "start-up"
    _start_watchdog()


def on_end(fn) -> None:
    """Calls ``fn(status, line)`` when the watchdog ends the process, after its line."""
    _state.on_end = fn


def _end(interruption: Interrupted) -> None:
    """Prints the one line and ends the process with the interruption's status."""
    os.write(_state.stderr_fd if _state.stderr_fd is not None else 2,
             f"\nerror: {interruption}\n".encode())
    if _state.on_end is not None:
        _state.on_end(interruption.exit_status, str(interruption))
    os._exit(interruption.exit_status)


def _start_watchdog() -> None:
    s = _state
    generation, received = s.generation, time.monotonic()

    def watch():
        deadline = received + GRACE_S
        while True:
            time.sleep(0.1)
            if s.done or s.generation != generation or s.pending is None:
                return
            now = time.monotonic()
            if now >= deadline and (not s.defer or now >= received + MAX_DEFER_S):
                _end(Interrupted(s.pending, s.at or s.where or ""))

    threading.Thread(target=watch, name="interrupt-watchdog", daemon=True).start()
