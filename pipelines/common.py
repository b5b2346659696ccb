"""What every command shares: flags, config checks, and the envelope that turns each kind of
failure into one line on stderr and its exit status.

Each pipeline is ``common.run(main)`` with ``main(config, workdir)``; a bad flag, config file,
config value or data file ends with exit status 2 before anything in the workdir is written;
a divergence with 3, a failed write with 74, SIGINT, SIGTERM and SIGHUP with 130, 143 and
129. What a
workdir may hold and reuse is :mod:`scae.workdir`'s; the names below keep the commands' calls.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

# Whether this process is a command (python -m pipelines.x), not a caller of run() in-process.
_AS_COMMAND = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name",
                      "").startswith("pipelines.")

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_env() -> dict[str, str] | None:
    """The environment in which a command re-executes itself so that glibc's malloc backs
    large blocks with transparent huge pages, or None where that is off, on or unavailable.

    XLA's CPU runtime allocates each call's temporaries afresh, and glibc serves blocks that
    large with new pages from the kernel, thousands of page faults per call of the paper's
    conv 2. glibc's ``hugetlb`` tunable (glibc >= 2.35) makes them huge pages where the
    kernel's transparent huge pages are not 'never': far fewer faults and faster steps
    (docs/performance.md, "Winograd's F(2×2, 5×5) for the 5×5 layers, and huge pages").
    Tunables are read only when a process starts, hence the exec:
    same PID, same arguments. ``SCAE_HUGE_PAGES=0`` turns it off."""
    if sys.platform != "linux" or os.environ.get("SCAE_HUGE_PAGES", "1") == "0":
        return None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    try:  # the C library this process runs on: "glibc 2.36"; no reading of the binary
        libc, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        if libc != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 35):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    if "[never]" in thp:
        return None
    return dict(os.environ,
                GLIBC_TUNABLES=":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE])))


if _AS_COMMAND and (_env := huge_pages_env()):
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], _env)

_EARLY_SIGNALS: list[int] = []
if _AS_COMMAND:  # a command is starting: record signals from the first moment (importing
    # scae imports jax, which takes seconds); scae.interrupt takes over below
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_signum, lambda signum, frame: _EARLY_SIGNALS.append(signum))



from scae import accounting, interrupt  # noqa: E402

if _AS_COMMAND:
    interrupt.early(_EARLY_SIGNALS)

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pipelines import usage  # noqa: E402
from scae import atomic, errors, provenance  # noqa: E402
from scae import config as cfglib  # noqa: E402
from scae import workdir as workdir_lib  # noqa: E402
from scae.errors import InputError, Interrupted  # noqa: E402
from scae.train import parallel  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mnist.py:quick (presets: smoke, quick, paper).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, records and figures.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete results in --workdir that came from a different config.")

# The config sections of each stage, as the commands name them (see scae.workdir.STAGES).


def fail(message: str, status: int = 2) -> None:
    """Ends the process with one line on stderr."""
    line = " ".join(str(message).split())
    # Before the line: a signal now changes nothing (no second line, no exit before the locks
    # are given back), and a watchdog already ending the process prints the only line. Before
    # parallel.ending too, in the watchdog's order (it tells the other processes after its
    # claim), so that neither waits on the other.
    interrupt.finish()
    parallel.ending()  # several processes: unless another thread is ending this one already
    log(f"error: {line}")  # on a line of its own, even below a progress bar
    sys.stderr.flush()
    parallel.tell_others(status, line)  # the other processes of a multi-process run end too
    if _AS_COMMAND:
        end(status)
    sys.exit(status)


def end(status: int) -> None:
    """Ends a command's process with ``status`` once its output is flushed, without Python's
    shutdown.

    Every file the command writes is complete by now (each write is a temporary file and a
    rename, checkpoints are saved synchronously). What Python's shutdown would still do is
    tear down modules under threads that XLA, orbax and tensorstore leave running after a
    failure or a signal stopped the work mid-way: on a loaded machine that crashed the process
    with SIGSEGV (exit 139) after the right line was printed, and printed those threads'
    tracebacks. ``os._exit`` skips that teardown, and with it the exit hook that gives the
    workdir's lock back, so the lock goes here."""
    workdir_lib.release_all()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(status)


def _config_path(argv: list[str]) -> str | None:
    spec = usage.config_spec(argv)
    return None if spec is None else spec.split(":", 1)[0]


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with ``--help`` answered here (exit 0) and every error as one line.

    ``--help`` with ``--config`` (and overrides) lists that config's keys as resolved, so the
    flags are parsed first; a bad one is reported as without ``--help``.
    """
    argv, wants_help = usage.split_help(argv)
    path = _config_path(argv)
    if path is not None and not Path(path).is_file():
        fail(f"--config: {path}: no such config file")
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, InputError, KeyError, AttributeError, TypeError, IndexError,
            FileNotFoundError, SyntaxError, ImportError) as e:
        fail(usage.parse_error(e, argv))
    if wants_help:
        print(usage.command_help(_CONFIG.value, usage.config_spec(argv)), end="")
        sys.exit(0)
    return rest


def guard_workdir(config, workdir: Path, stage: str, overwrite: bool, data=None) -> None:
    """:func:`scae.workdir.guard` for ``stage`` ('pretrain', 'compare' or 'filters', see
    :data:`scae.workdir.STAGES`), with the fingerprint of ``data`` (the command's
    :class:`scae.data.inputs.Inputs`), so that results made from other data at the same path
    are refused."""
    # What the machine cannot run is refused before the workdir changes: pretraining splits
    # its batch over the devices. (A compare whose stack is there already does not pretrain.)
    if config.pretrain.layers and (stage != "compare" or not (workdir / "pretrain").is_dir()):
        parallel.check_batch(config.pretrain.batch_size, "pretrain.batch_size")

    def guard():
        workdir_lib.guard(config, workdir, stage, overwrite, data_fingerprint(config, data))

    # Several processes: process 0 checks, cleans and records the workdir first, and the
    # others look at it only then, so that every process resumes from the same files.
    if atomic.writer():
        guard()
    parallel.barrier("workdir")
    if not atomic.writer():
        guard()


def data_fingerprint(config, data) -> workdir_lib.DataFingerprint | None:
    """What a workdir records of the data of ``config.data.source`` as loaded (``data``, an
    :class:`scae.data.inputs.Inputs`), or None without data."""
    if data is None or not getattr(data, "fingerprint", ""):
        return None
    identity = getattr(data, "identity", None)
    return workdir_lib.DataFingerprint(str(config.data.source), data.fingerprint,
                                       identity.fingerprint if identity else "")



def _command(main: Callable) -> str:
    """The command's name (``pretrain``, ``compare``, ...) from its module's file."""
    module = sys.modules.get(main.__module__)
    return Path(getattr(module, "__file__", None) or sys.argv[0]).stem


def _parse_flags_or_fail(argv: list[str]) -> list[str]:
    """:func:`_parse_flags`, with what a config file's own code raises (its ``get_config``
    failing, an override of a key that is not a section) as one line and exit 2."""
    try:
        return _parse_flags(argv)
    except (TypeError, KeyError, AttributeError, IndexError) as e:
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        nested = [o for o in overrides if o.count(".") >= 2] or overrides
        if nested:
            fail(f"{', '.join(nested)}: cannot set this config key (a parent key is a value, "
                 f"not a section: {type(e).__name__}: {e})")
        fail(f"--config: {_config_path(argv)}: get_config failed ({type(e).__name__}: {e})")
    except Exception as e:  # noqa: BLE001 - a config file's code may raise anything
        fail(f"--config: {_config_path(argv)}: get_config failed ({type(e).__name__}: {e})")


def _validate(config, command: str) -> None:
    """:func:`scae.config.validate` for ``command``, with a foreign config named as such."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise InputError(f"--config: get_config() returned a {type(config).__name__}, "
                         "expected an ml_collections.ConfigDict")
    try:
        cfglib.validate(config, command)
    except (KeyError, AttributeError, TypeError, IndexError) as e:
        raise InputError(f"--config: not a config for this project ({type(e).__name__}: {e}); "
                         "start from configs/mnist.py") from None


def run(main: Callable, needs_config: bool = True, needs_workdir: bool = True) -> None:
    """Parses the flags and calls ``main(config, workdir)``, turning every expected failure
    into one line on stderr and its exit status: bad input 2, divergence 3, a failed write
    74, SIGINT 130, SIGTERM 143, SIGHUP 129 (see :mod:`scae.errors`). Without
    ``needs_workdir`` a missing ``--workdir`` gives ``workdir=None``."""
    command = _command(main)
    # A command's imports (JAX, flax, orbax: a great many objects) live as long as it does.
    # Frozen, they are out of the way of the cyclic collector's full passes during the run and
    # of the passes Python makes as it shuts down (docs/performance.md, "commands that end at
    # once").
    freeze = gc.freeze if _AS_COMMAND else lambda: None
    freeze()

    def _main(argv):
        # absl's INFO stream carries orbax's and jax's chatter; the pipelines report through
        # :func:`log` (tqdm-safe) instead.
        logging.set_verbosity(logging.WARNING)
        interrupt.install()
        try:
            _envelope(argv)
        finally:
            interrupt.uninstall()

    def _envelope(argv):
        try:
            interrupt.check("start-up")
            provenance.pin_git_state()  # the code this process runs, named in its records
            enable_compilation_cache()
            parallel.initialize_distributed()
            if len(argv) > 1:
                fail(f"unexpected arguments: {' '.join(argv[1:])}")
            if not _WORKDIR.value and needs_workdir:
                fail("--workdir: required")
            config = _CONFIG.value
            if config is None and needs_config:
                fail("--config: required, e.g. --config=configs/mnist.py:quick")
            if config is not None:
                _validate(config, command)
                warn_emulated_bf16(config)
            accounting.started()
            main(config, Path(_WORKDIR.value) if _WORKDIR.value else None)
            interrupt.check("the end")  # a signal no check point acted on still ends it so
            if _WORKDIR.value:
                log(accounting.table(accounting.breakdown()))
            parallel.finish()
        except InputError as e:
            fail(str(e))
        except FloatingPointError as e:  # divergence: the message names where; exit 3
            fail(str(e), status=3)
        except Interrupted as e:
            interrupt.finish()
            fail(str(e), status=e.exit_status)
        except KeyboardInterrupt:
            interrupt.finish()
            e = interrupt.pending() or Interrupted(signal.SIGINT, "")
            fail(str(e), status=e.exit_status)
        except Exception as e:
            error = errors.as_write_error(e)
            if error is None:
                lost = parallel.peer_lost(e)
                if lost is not None:
                    fail(lost, status=parallel.PEER_LOST_STATUS)
                # A bug: its traceback here, one line in the other processes.
                parallel.tell_others(1, f"{type(e).__name__}: {' '.join(str(e).split())}"[:300])
                raise
            fail(str(error), status=74)

    try:
        app.run(_main, flags_parser=_parse_flags_or_fail)
    finally:
        freeze()  # what the run made, too: the process is ending


def warn_emulated_bf16(config) -> None:
    """One warning line when a config asks for bf16 products on a CPU without bf16
    instructions: XLA then computes them through float32 conversions, slower than float32
    itself (docs/performance.md), while the run goes on as asked."""
    import jax

    from scae import provenance

    model = config.get("model")  # a ConfigDict: _validate checked
    if (model is None or model.get("compute_dtype") != "bfloat16"
            or jax.default_backend() != "cpu" or provenance.cpu_has_bf16() is not False):
        return
    log("warning: model.compute_dtype=bfloat16 on a CPU without bf16 instructions "
        "(avx512_bf16, AMX or Arm's bf16): its products are converted to float32 and run "
        "slower than with model.compute_dtype=float32")


def enable_compilation_cache() -> Path | None:
    """Keeps every compiled XLA program on disk, so a rerun (a resume after a kill, another
    seed, the next preset) loads it instead of compiling again (docs/performance.md,
    "Compilation from a cold cache"). JAX keys each entry on the program, the compile options,
    the devices and its own version, so a stale entry is never used. The folder is
    ``$JAX_COMPILATION_CACHE_DIR`` or ``<SCAE_CACHE_DIR or ~/.cache/scae>/xla``;
    ``SCAE_COMPILATION_CACHE=0`` turns it off. Returns the folder in use."""
    import jax

    from scae.data import sources as data

    if os.environ.get("SCAE_COMPILATION_CACHE", "1") == "0":
        jax.config.update("jax_enable_compilation_cache", False)  # even one set by JAX_* vars
        return None
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(data.cache_dir() / "xla")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:  # only costs speed: say so once and compile as usual
        log(f"warning: compilation cache off, cannot use {folder} ({e})")
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # JAX's default minimum compile time skips the many small programs that together cost
        # most of a short run's start-up.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return Path(folder)


def log(message: str) -> None:
    """One progress line on stderr that does not break the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def overwrite() -> bool:
    return _OVERWRITE.value
