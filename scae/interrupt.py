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
* a second signal ends the process at once, the same way, unless the process is ending
  already (the envelope printing its line, see :func:`finish`): then it changes nothing.

One thread ends the process and prints the one line; each way of ending gives the workdir's
locks back (:func:`scae.workdir.release_all`), which ``os._exit`` would otherwise skip.

The line names where the command was: the block :func:`at` names, else the training phase
running (which the driver names as it starts, :func:`progress`, and at each check point), read
when the signal lands and again where it is raised: never the phase before, whose last check
point is all a remembered place could give until the new phase's first chunk ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
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
        # What the command was doing then, and from where it is raised what that place named
        # (the envelope's line): a second signal during the unwinding names the same place.
        self.where: str | None = None
        self.at: str | None = None  # what the command says it is doing now (see :func:`at`)
        # The training phase running, and its last check point ("layer 2, step 40/120"), or
        # None between phases (see :func:`progress`).
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
        self.ender: int | None = None  # the thread that holds _ending


_state = _State()
# Held by the thread that ends the process (the envelope, the watchdog or a second signal's
# handler), so that one line is printed, one status given and the locks given back once.
_ending = threading.Lock()


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
    _unclaim()  # an earlier command run in this process (a test) ended by SystemExit
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
    _unclaim()
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
    40/120" for the message; without ``where`` (the end of a :func:`deferred` block) the
    message names the :func:`at` block or the training phase this is called in, else where
    the signal landed."""
    s = _state
    if where is not None:
        s.progress = where
    if s.pending is not None:
        s.where = where or s.at or s.progress or s.where or ""
        raise Interrupted(s.pending, s.where)


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
    """Called by the envelope before it prints its one line and ends the process itself: the
    watchdog and a further signal stand down, so that neither prints a second line nor ends
    the process before the envelope has given the workdir's locks back. If the watchdog or a
    second signal is ending the process already, waits for that end instead (its line is
    the one printed)."""
    _state.done = True
    if _ending.acquire(blocking=False):
        _state.ender = threading.get_ident()
    elif _state.ender != threading.get_ident():
        while True:  # the other thread ends the process with os._exit
            time.sleep(60)


def _unclaim() -> None:
    """Lets go of the end of the process where this thread claimed it (:func:`finish`) and the
    process went on: a command run in-process, which ends by SystemExit."""
    if _state.ender == threading.get_ident():
        _state.ender = None
        _ending.release()


def progress(where: str | None) -> None:
    """Names the training phase that starts now ("layer 2", or "layer 2, step 40/120" when
    resumed), or None when it has ended: a signal that lands before the phase's first check
    point (its set-up, compilation, first chunk) names this phase, not the one before."""
    _state.progress = where


def _location(frame) -> str:
    """The innermost frame of this project's code, as 'scae/train/file.py:function' (only
    where no :func:`at` block or training phase names the place: start-up, a phase's
    inputs)."""
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
    if s.pending is None:
        # Recorded before anything else runs here: a signal that comes meanwhile (its handler
        # can run between two bytecodes of this one) is a second one.
        s.pending = signum
        if not _ending.locked():
            s.where = s.at or s.progress or _location(frame) or "start-up"
            _start_watchdog()
    elif not _ending.locked():  # asked twice: end now (unless the process is ending already,
        # with its line, its status and the locks given back)
        _end(Interrupted(s.pending, s.at or s.progress or s.where or ""))


def on_end(fn) -> None:
    """Calls ``fn(status, line)`` when the watchdog ends the process, after its line."""
    _state.on_end = fn


def _end(interruption: Interrupted) -> None:
    """Prints the one line, gives the workdir's locks back and ends the process with the
    interruption's status; returns at once if another thread (or the envelope in this one)
    is ending the process already."""
    if not _ending.acquire(blocking=False):
        return
    _state.ender = threading.get_ident()
    try:
        with contextlib.suppress(OSError):  # a closed stderr: the status still tells
            os.write(_state.stderr_fd if _state.stderr_fd is not None else 2,
                     f"\nerror: {interruption}\n".encode())
        if _state.on_end is not None:
            _state.on_end(interruption.exit_status, str(interruption))
    finally:
        give_back_locks()
        os._exit(interruption.exit_status)


def give_back_locks() -> None:
    """:func:`scae.workdir.release_all`, whose atexit hook ``os._exit`` skips. Looked up rather
    than imported: a process that never imported it holds no lock, and an import from a signal
    handler could wait on an import the interrupted main thread is in the middle of."""
    workdir = sys.modules.get("scae.workdir")
    if workdir is not None:
        with contextlib.suppress(Exception):  # the process ends regardless
            workdir.release_all()


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
                return  # another thread is ending the process

    threading.Thread(target=watch, name="interrupt-watchdog", daemon=True).start()
