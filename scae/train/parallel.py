"""Spreading training over every visible device with ``jax.sharding``: the batch, or the seeds.

Two ways, chosen per phase (:func:`spread`):

- ``batch``: a 1-D mesh over a ``data`` axis; each batch is split across devices along its
  first axis and the parameters are replicated, so XLA inserts the gradient all-reduce.
- ``seeds``: the seeds of a phase are independent models, so each device trains its share of
  them (a ``seeds`` mesh axis, :func:`jax.shard_map`) with no collective inside the steps;
  the seeds are padded with copies to a multiple of the devices, and the copies dropped.

With one device every function here is the identity, so the same code runs on a laptop, a GPU
or a TPU slice.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import faulthandler
import functools
import itertools
import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scae import atomic, interrupt
from scae.errors import InputError


@functools.cache
def mesh() -> Mesh:
    """The mesh over all devices (all hosts' devices after ``jax.distributed.initialize``)."""
    return Mesh(np.array(jax.devices()), ("data",))


@functools.cache
def seed_mesh() -> Mesh:
    """The same devices as :func:`mesh`, along a ``seeds`` axis."""
    return Mesh(np.array(jax.devices()), ("seeds",))


def num_devices() -> int:
    return mesh().size


SPREADS = ("auto", "batch", "seeds")
# Inside a seed-spread program each device holds whole seeds: batches are not split further.
_within_seeds: contextvars.ContextVar[bool] = contextvars.ContextVar("within_seeds",
                                                                     default=False)


def spread(setting: str, seeds: int) -> str:
    """How a phase of ``seeds`` seeds uses the devices: 'seeds' or 'batch' as ``setting`` says,
    'auto' picking 'seeds' when there are several devices and seeds (no communication during
    the steps) and 'batch' otherwise; 'none' on one device."""
    if setting not in SPREADS:
        raise ValueError(f"spread {setting!r} not in {SPREADS}")
    if num_devices() == 1:
        return "none"
    if setting == "auto":
        return "seeds" if seeds > 1 else "batch"
    return setting


def over_devices(fn, in_specs: tuple, seeds: int):
    """``fn`` (arguments and outputs with a leading seed axis where ``in_specs`` says 'seeds',
    outputs all seeded) with the seeds spread over the devices: padded with copies of seed 0 to
    a multiple of the devices, each device running ``fn`` on its own seeds, the copies dropped
    from the outputs. Call it inside jit."""
    k = num_devices()
    padded = -(-seeds // k) * k
    specs = tuple(P("seeds") if s == "seeds" else P() for s in in_specs)
    body = jax.shard_map(fn, mesh=seed_mesh(), in_specs=specs, out_specs=P("seeds"),
                         check_vma=False)

    def pad(a):  # an argument laid out padded already (seed_batches) is taken as it is
        return a if a.shape[0] == padded else jnp.concatenate(
            [a, jnp.broadcast_to(a[:1], (padded - seeds,) + a.shape[1:])])

    def run(*args):
        args = [jax.tree.map(pad, a) if s == "seeds" else a for a, s in zip(args, in_specs)]
        token = _within_seeds.set(True)
        try:
            out = body(*args)
        finally:
            _within_seeds.reset(token)
        # Replicated on the way out, as every other program's state is: the next chunk's
        # program (compiled for replicated inputs) takes it as it is, and every process can
        # read it back.
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
            a[:seeds], NamedSharding(mesh(), P())), out)

    return run


def shard_batch(tree, batch_axis: int = 0):
    """Constrains every array of ``tree`` (inside jit) to be split along ``batch_axis`` (not
    inside a seed-spread program, where each device holds whole seeds)."""
    if num_devices() == 1 or _within_seeds.get():
        return tree

    def constrain(x):
        spec = [None] * x.ndim
        spec[batch_axis] = "data"
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh(), P(*spec)))

    return jax.tree.map(constrain, tree)


def replicate(tree):
    """Places ``tree`` on every device (parameters, optimiser state, data sets). With several
    processes every process holds the same host values (each computes or reads them), and
    each puts its copy on its own devices: one global array replicated over all of them."""
    if num_devices() == 1:
        return tree
    sharding = NamedSharding(mesh(), P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _global(x, sharding), tree)


def _global(x, sharding: NamedSharding):
    """``x`` (host values, a process-local array or a global one) as a global array with
    ``sharding``: no device outside this process is written from here."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    host = np.asarray(x if isinstance(x, (np.ndarray, jax.Array)) else jnp.asarray(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def seed_batches(need: np.ndarray, read: Callable[[np.ndarray], Any], how: str) -> Any:
    """The examples ``need`` (seeds, steps, batch: example indices) as global arrays (seeds,
    steps, batch, ...), laid out over the devices as ``how`` (:func:`spread`) spreads the
    phase: with ``batch`` each device holds its slice of every batch, with ``seeds`` its own
    seeds' batches (the seed axis padded to a multiple of the devices with zeros, which the
    padding copies of :func:`over_devices` train on and drop), with ``none`` the one device
    all of them.

    ``read(indices)`` gives the examples at ``indices`` (distinct), in that order, as a pytree
    of host arrays. It is asked only for the examples of this process's devices, each once, so
    that with several processes each host reads its own shard of the data and no more; every
    array is made from those (``jax.make_array_from_callback`` fills this process's devices
    only)."""
    if how == "seeds":
        k = num_devices()
        padded = -(-need.shape[0] // k) * k
        need = np.concatenate([need, np.full((padded - need.shape[0],) + need.shape[1:], -1,
                                             need.dtype)])
        sharding = NamedSharding(seed_mesh(), P("seeds"))
    else:
        sharding = NamedSharding(mesh(), P(None, None, "data") if how == "batch" else P())
    indices = list(sharding.addressable_devices_indices_map(need.shape).values())
    wants = [need[index] for index in indices]
    mine = np.unique(np.concatenate([want.reshape(-1) for want in wants]))
    mine = mine[mine >= 0]
    if len(wants) == 1 and mine.size == wants[0].size:
        # One block of distinct examples (one device per process, and no image shared by two
        # seeds): read in the block's order, with no copy to gather them.
        leaves, treedef = jax.tree.flatten(read(wants[0].reshape(-1)))
        per_leaf = [{_position(indices[0]): leaf.reshape(wants[0].shape + leaf.shape[1:])}
                    for leaf in leaves]
    else:  # each example read once, then gathered into the blocks that take it
        leaves, treedef = jax.tree.flatten(read(mine))
        per_leaf = [_blocks(leaf, mine, indices, wants) for leaf in leaves]
    # Every block is made before any is placed, and the examples as read are freed first: the
    # host holds one copy of the chunk while the devices take theirs.
    del leaves
    return jax.tree.unflatten(treedef, [_place(b, need.shape, sharding) for b in per_leaf])


def _blocks(examples: np.ndarray, mine: np.ndarray, indices: list, wants: list) -> dict:
    """The blocks ``wants`` (example indices; -1: seed padding, zeros) of ``examples``, the
    examples ``mine`` (sorted), by the :func:`_position` of their ``indices``."""
    out = {}
    for index, want in zip(indices, wants):
        if want.min(initial=0) >= 0:
            block = examples[np.searchsorted(mine, want)]
        else:
            block = np.zeros(want.shape + examples.shape[1:], examples.dtype)
            block[want >= 0] = examples[np.searchsorted(mine, want[want >= 0])]
        out[_position(index)] = block
    return out


def _place(blocks: dict, shape: tuple, sharding: NamedSharding) -> jax.Array:
    """The global array of leading ``shape`` whose blocks on this process's devices are
    ``blocks`` (by :func:`_position` of their index)."""
    full = shape + next(iter(blocks.values())).shape[len(shape):]
    return jax.make_array_from_callback(full, sharding,
                                        lambda index: blocks[_position(index[:len(shape)])])


def _position(index: tuple) -> tuple:
    """A block's index (slices) as a key."""
    return tuple((s.start, s.stop, s.step) for s in index)


def check_batch(batch_size: int, key: str) -> None:
    """Data parallelism needs the batch to split evenly over the devices."""
    if batch_size % num_devices():
        raise InputError(f"config.{key}: {batch_size} does not split over {num_devices()} devices")


# --- several processes: jax.distributed's multi-controller runtime -------------------------
#
# Every process runs the same command on the same workdir, computes the same values and takes
# part in every collective; process 0 alone writes files (scae.atomic's writer flag) and holds
# the workdir's lock; orbax coordinates the checkpoints. When one process ends in error (an
# error line, a signal), it posts its line in the coordinator's key-value store; every other
# process prints it as its own one line and exits with the same status (docs/scaling.md,
# "Several processes").

# A process that has sent no heartbeat for this long is taken for dead, and the coordination
# service ends the others (JAX's default is 100 s). SCAE_HEARTBEAT_S overrides it.
HEARTBEAT_S = 10
_ENDED = "scae/ended"  # "<process> <status> <line>" of the first process that ended in error
_ACK = "scae/ended_ack/"  # + process: that process has read it and is ending
ACK_WAIT_S = 1.0  # how long the coordinator waits for the others' acknowledgements
_ending = threading.Lock()  # held by the thread that ends this process
_ender: int | None = None  # that thread
_stderr: int | None = None  # stderr as it was at start-up (a checkpoint save mutes fd 2)
_barriers = itertools.count()
_agreements = itertools.count()
_processes = 1  # how many processes this run has (set when it joins a multi-process run)
# The exit status of a process whose peer vanished mid-collective (killed, its machine lost):
# EX_TEMPFAIL, "try again", since a rerun of every process resumes.
PEER_LOST_STATUS = 75


def initialize_distributed() -> bool:
    """Joins a multi-process run (several hosts, or several processes on one) when the
    environment asks for one, and returns whether it did.

    ``jax.distributed.initialize()`` finds the coordinator by itself on TPU pods and under
    SLURM; elsewhere set ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. ``SCAE_DISTRIBUTED=1`` forces the call. On
    CPUs the processes' collectives go over gloo (TCP). Process 0 becomes the only writer
    (:func:`scae.atomic.set_writer`), and every process starts watching for another one's end.
    Call it before anything starts JAX's backend.
    """
    global _stderr, _processes
    env = os.environ
    wanted = (env.get("SCAE_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in env
              or int(env.get("SLURM_NTASKS", "1") or 1) > 1)
    if not wanted:
        return False
    kwargs = {}
    for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id"),
                      ("SCAE_HEARTBEAT_S", "heartbeat_timeout_seconds")):
        if name in env:
            try:
                kwargs[arg] = int(env[name])
            except ValueError:
                raise InputError(f"{name}={env[name]!r}: expected a whole number") from None
    kwargs.setdefault("heartbeat_timeout_seconds", HEARTBEAT_S)
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # older JAX: none
    # JAX's preemption service takes SIGTERM for itself; scae.interrupt handles the signals
    # (a checkpoint, then one line), and tells the other processes.
    with contextlib.suppress(AttributeError, ValueError):
        jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError("cannot join the multi-process run: "
                         + " ".join(str(e).split())[:300]) from None
    atomic.set_writer(jax.process_index() == 0)
    _processes = jax.process_count()
    if _processes > 1:
        # A lost peer ends this process with one line (_lost); the Python threads' dump that
        # faulthandler would add on JAX's abort says nothing more.
        faulthandler.disable()
        _stderr = os.dup(2)
        threading.Thread(target=_watch, name="scae-peers", daemon=True).start()
        _catch_runtime_end()
        interrupt.on_end(tell_others)  # a signal that ends this process by its watchdog
    return True


def _client():
    """JAX's distributed runtime client (its key-value store and barriers); JAX has no public
    name for it."""
    from jax._src import distributed

    return distributed.global_state.client


def barrier(name: str, timeout_s: float = 24 * 3600) -> None:
    """Waits until every process has reached this point (a no-op with one process). Every
    process must pass the same barriers in the same order. A process that ends in error
    meanwhile ends the waiting ones (:func:`tell_others`)."""
    if _processes == 1:
        return
    _client().wait_at_barrier(f"scae/{name}/{next(_barriers)}", int(timeout_s * 1000))


def agreed(value: bool) -> bool:
    """Process 0's ``value`` in every process (``value`` itself with one process): for a
    decision taken from files that process 0 may be writing meanwhile (whether a checkpoint
    folder exists yet), so that every process takes the same path and meets the same
    collectives. Every process must call it at the same points."""
    if _processes == 1:
        return value
    key, client = f"scae/agreed/{next(_agreements)}", _client()
    if jax.process_index() == 0:
        client.key_value_set(key, "1" if value else "0")
        return value
    return client.blocking_key_value_get(key, 24 * 3600 * 1000) == "1"


def ending() -> None:
    """Claims the end of this process for the calling thread, before it prints its error line.
    With several processes another thread may be ending it already (another process's line,
    or a signal's): then this one waits for that thread's exit, so that one line is printed
    and one status given, not two."""
    global _ender
    if _processes == 1 or _ender == threading.get_ident():
        return
    if _ending.acquire(blocking=False):
        _ender = threading.get_ident()
        return
    while True:  # the other thread ends the process with os._exit
        time.sleep(60)


def tell_others(status: int, line: str) -> None:
    """Called by a process that is ending with ``status`` and the error ``line`` (printed):
    every other process prints it as its own one line and exits with the same status. Returns
    once they have read it (process 0, which hosts the coordination service, leaves last)."""
    if _processes == 1:
        return
    ending()
    client, me = _client(), jax.process_index()
    try:
        client.key_value_set(_ENDED, f"{me} {status} {line}")
    except Exception:  # noqa: BLE001 - another process ended first, or the service is gone
        pass
    _acknowledge(client, me)


def _acknowledge(client, me: int) -> None:
    """This process's acknowledgement; process 0 waits for the others' (bounded), so that
    the service they talk to outlives their exit."""
    try:
        client.key_value_set(f"{_ACK}{me}", "1")
        if me == 0:
            deadline = time.monotonic() + ACK_WAIT_S
            for p in range(1, _processes):
                left = deadline - time.monotonic()
                if left > 0:
                    with contextlib.suppress(Exception):
                        client.blocking_key_value_get(f"{_ACK}{p}", int(left * 1000))
            time.sleep(0.2)  # their exit, after their acknowledgement
    except Exception:  # noqa: BLE001 - the service is gone: nothing left to wait for
        pass


def _watch() -> None:
    """Waits for another process's end in error; then prints its line and exits likewise. If
    the coordination service stops answering (process 0, which hosts it, vanished), this
    process ends with that one line (:func:`_lost`)."""
    global _ender
    client, me = _client(), jax.process_index()
    while True:
        try:
            value = client.blocking_key_value_get(_ENDED, 60_000)
        except Exception as e:  # noqa: BLE001 - a timeout, or the service is gone
            if me != 0 and "DEADLINE_EXCEEDED" not in str(e) and _coordinator_gone():
                _lost(_coordinator_line())
                return  # this process is ending already
            time.sleep(0.5)
            continue
        who, status, line = value.split(" ", 2)
        if int(who) == me or not _ending.acquire(blocking=False):
            return  # this process is ending already, with its own line
        _ender = threading.get_ident()
        os.write(_stderr if _stderr is not None else 2,
                 f"\nerror: process {who} of {_processes} ended: {line}\n".encode())
        _acknowledge(client, me)
        interrupt.give_back_locks()  # which os._exit would leave behind
        os._exit(int(status))


def peer_lost(error: BaseException) -> str | None:
    """The one line for ``error`` when it says that another process of this multi-process run
    vanished in the middle of a collective (gloo's or NCCL's connection to it closed), else
    None. When the coordination service itself no longer answers (process 0 vanished, and
    with it the service), this process ends here with that line (:func:`_lost`), as its other
    threads would end it."""
    if _processes == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
        return None
    if jax.process_index() != 0 and _coordinator_gone():
        _lost(_coordinator_line())
        return _coordinator_line()  # another thread is ending this process with that line
    text = " ".join(str(error).split())
    if not any(w in text.lower()
               for w in ("gloo", "nccl", "connection closed", "connection reset")):
        return None
    return (f"another process of this run stopped answering mid-step (killed, or its machine "
            f"lost: {text[:160]}); rerun every process to resume")


# --- a vanished peer: one line, exit 75, whichever thread learns of it first ----------------
#
# When process 0 vanishes, the coordination service goes with it. JAX's client in every other
# process learns of it at once (its long-polled error RPC fails), logs an error and a fatal
# line with a stack trace through the C library's stderr, and aborts; when another process
# misses its heartbeats, the service tells every process the same way. The client's callback
# for that (``missed_heartbeat_callback``) cannot be a Python function in this jaxlib: the
# status it is called with has no Python type, and the call aborts with std::bad_cast. So the
# end is caught around it (_catch_runtime_end): the C library's stderr stream goes through a
# pipe that a thread reads (_forward_c_stderr), passing every line on to descriptor 2 except
# the coordination service's fatal end, on which it prints this process's one line and exits
# with PEER_LOST_STATUS; and SIGABRT, raised by the abort that follows the fatal line, holds
# the aborting thread for a few seconds (the C library's sleep as its handler: the signal
# number, 6, is the seconds), long enough for that thread to act. An abort of any other cause
# still ends the process with SIGABRT after those seconds, its message passed on. Python's own
# writes (sys.stderr, descriptor 2) do not go through the pipe, so no line of ours waits in it
# when a process exits.

# The fatal line of JAX's client when the coordination service reports an error.
_FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
# An absl log line's head: severity, date, time, thread, source file and line.
_C_LOG = re.compile(rb"([EF])\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ")
# Where the coordination service's and its client's errors come from: the fatal line follows
# them within milliseconds when they are the start of the end.
_COORDINATION_SOURCES = (b"coordination_service.cc", b"coordination_service_agent.cc",
                         b"client.h")
HOLD_S = 5.0  # how long such an error line waits for a fatal line before it is passed on


def _coordinator_line() -> str:
    return (f"process 0 of {_processes} (the coordinator of this run) stopped answering "
            f"(killed, or its machine lost); rerun every process to resume")


def _fatal_line(fatal: bytes) -> str:
    """This process's one line for the client's fatal line ``fatal``."""
    text = " ".join(fatal.decode(errors="replace").split())
    if jax.process_index() != 0 and "Failed to send RPC to coordination service" in text:
        return _coordinator_line()
    # "... stopped sending heartbeats): 1 2 The tasks have crashed ...": the processes lost.
    lost = re.search(r"stopped sending heartbeats\):(.*?)(?:The tasks|$)", text)
    tasks = sorted({int(t) for t in re.findall(r"(\d+)(?=[\s,]|$)", lost[1])}) if lost else []
    if tasks:
        which = ", ".join(map(str, tasks))
        return (f"process {which} of {_processes} stopped answering (its heartbeats stopped: "
                f"killed, or its machine lost); rerun every process to resume")
    status = text.split("absl::Status:", 1)[-1].strip()
    return (f"another process of this run stopped answering ({status[:160]}); rerun every "
            f"process to resume")


def _coordinator_gone() -> bool:
    """Whether the coordination service fails to answer a request (a missing key is an
    answer)."""
    try:
        _client().key_value_try_get("scae/probe")
    except Exception as e:  # noqa: BLE001 - JAX raises its runtime error for both
        return "NOT_FOUND" not in str(e)
    return False


def _lost(line: str) -> None:
    """Ends this process with the error ``line`` and :data:`PEER_LOST_STATUS`, unless another
    thread is ending it already (then returns at once)."""
    global _ender
    if not _ending.acquire(blocking=False):
        return
    _ender = threading.get_ident()
    os.write(_stderr if _stderr is not None else 2, f"\nerror: {line}\n".encode())
    interrupt.give_back_locks()  # which os._exit would leave behind
    os._exit(PEER_LOST_STATUS)


def _catch_runtime_end() -> None:
    """Routes the C library's stderr stream through :func:`_forward_c_stderr` and delays
    SIGABRT (see above). Only with glibc, whose ``stderr`` is a variable that can be pointed
    elsewhere; elsewhere JAX's own end stays."""
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
        libc = ctypes.CDLL(None)
        c_stderr = ctypes.c_void_p.in_dll(libc, "stderr")
    except (ValueError, OSError, AttributeError):
        return
    libc.fdopen.restype, libc.fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
    libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
    libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]
    read_end, write_end = os.pipe()
    stream = libc.fdopen(write_end, b"w")
    if not stream:
        os.close(read_end)
        os.close(write_end)
        return
    libc.setvbuf(stream, None, 2, 0)  # _IONBF: each message reaches the pipe as it is written
    threading.Thread(target=_forward_c_stderr, args=(read_end,), name="scae-c-stderr",
                     daemon=True).start()
    c_stderr.value = stream
    libc.signal(signal.SIGABRT, ctypes.cast(libc.sleep, ctypes.c_void_p).value)


def _forward_c_stderr(fd: int) -> None:
    """Passes the C library's stderr (read from ``fd``) on to descriptor 2, line by line. An
    error line of the coordination service or its client is held (with what follows it) for
    :data:`HOLD_S`: if the client's fatal line comes meanwhile, they are dropped and the
    process ends with its one line (:func:`_lost`); else they are passed on late. After the
    fatal line everything is dropped: it is the runtime's abort."""
    buffer, held, since, ended = b"", [], 0.0, False
    while True:
        wait = max(0.0, since + HOLD_S - time.monotonic()) if held else None
        if not select.select([fd], [], [], wait)[0]:
            _write(b"".join(held))  # no fatal line followed
            held = []
            continue
        data = os.read(fd, 1 << 16)
        if not data:  # the stream was closed
            if not ended:
                _write(b"".join(held) + buffer)
            return
        *lines, buffer = (buffer + data).split(b"\n")
        for n, line in enumerate(lines):
            line += b"\n"
            if ended:
                continue
            if _FATAL in line:  # the message's status goes on over the lines after it
                ended, held = True, []
                _lost(_fatal_line(b"".join([line, *(x + b"\n" for x in lines[n + 1:]),
                                            buffer])))  # returns if ending already
                continue
            head = _C_LOG.match(line)
            if head and head[2] in _COORDINATION_SOURCES and not held:
                since = time.monotonic()
            if held or (head and head[2] in _COORDINATION_SOURCES):
                held.append(line)
            else:
                _write(line)
        if buffer and not held and not ended and buffer[:1] not in (b"E", b"F"):
            _write(buffer)  # a line still being written that is no log line's head
            buffer = b""


def _write(data: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(2, data)


def finish() -> None:
    """The end of a successful command: waits for every process to get there (process 0 may
    still be writing figures) and leaves the runtime together (a no-op with one process)."""
    if _processes == 1:
        return
    barrier("end")
    ending()  # nothing to report from here on
    jax.distributed.shutdown()
