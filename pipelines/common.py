"""What every command shares: flags, config checks, the workdir guard and the exit-2 errors.

Each pipeline is ``common.run(main)`` with ``main(config, workdir)``; a bad flag, config file,
config value or data file ends with one line on stderr and exit status 2, before anything in
the workdir is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from pipelines import usage
from scae import config as cfglib
from scae import atomic, parallel
from scae.errors import InputError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mnist.py:quick (presets: smoke, quick, paper).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, records and figures.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete results in --workdir that came from a different config.")

# The config sections whose change invalidates what a command finds in a workdir.
PRETRAIN_KEYS = ("seed", "data", "model", "pretrain")
COMPARE_KEYS = PRETRAIN_KEYS + ("finetune",)
RESULT_DIRS = ("pretrain", "compare", "figures")
# Keys that say how to react to a failure, not what to compute: a workdir made with other
# values (or before they existed) is still the same experiment.
NEUTRAL_KEYS = ("pretrain.divergence_retries", "finetune.divergence_retries")


def fail(message: str, status: int = 2) -> None:
    """Ends the process with one line on stderr."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(status)


def _config_spec(argv: list[str]) -> str | None:
    """The ``FILE[:PRESET]`` of ``--config``, if given."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_path(argv: list[str]) -> str | None:
    spec = _config_spec(argv)
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
    except flags.Error as e:
        message = str(e)
        # A config file's own InputError arrives wrapped in a traceback; keep its message.
        if "InputError: " in message:
            message = message.rsplit("InputError: ", 1)[1]
        fail(message)
    except InputError as e:
        fail(str(e))
    except (KeyError, AttributeError, TypeError, IndexError) as e:
        fail(_unknown_override(argv, e))
    except (FileNotFoundError, SyntaxError, ImportError) as e:
        fail(f"--config: cannot load the config file: {e}")
    if wants_help:
        print(usage.command_help(_CONFIG.value, _config_spec(argv)), end="")
        sys.exit(0)
    return rest


def _unknown_override(argv: list[str], error: Exception) -> str:
    """The message for ml_collections' KeyError, AttributeError or TypeError (a key below a
    value) while applying the ``--config.KEY=VALUE`` overrides: the first KEY the config lacks,
    with the nearest keys."""
    spec = _config_spec(argv)
    try:
        config = usage.load_config(spec) if spec else None
    except Exception:  # noqa: BLE001 - it loaded once already; fall back to the raw error
        config = None
    key = usage.missing_key(config, argv) if config is not None else None
    if key is None:
        return f"--config: cannot load the config file: {' '.join(str(error).split())}"
    return usage.unknown_key_message(config, key, spec)


def config_dict(config) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(config.to_json())


def _differences(old: dict, new: dict, keys: Sequence[str], prefix: str = "") -> list[str]:
    out = []
    for k in keys:
        if f"{prefix}{k}" in NEUTRAL_KEYS:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, sorted(set(a) | set(b)), f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the workdir, {b!r} now")
    return out


def guard_workdir(config, workdir: Path, keys: Sequence[str], overwrite: bool) -> None:
    """Refuses a workdir whose results came from a config that differs in ``keys``.

    With ``overwrite`` the old results are deleted instead. Then takes the workdir's lock
    (refusing a workdir another command is running in), removes what killed writes left
    behind, and writes ``config.json``.
    """
    path = workdir / "config.json"
    new = config_dict(config)
    diffs = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); use a new --workdir or --overwrite")
        diffs = _differences(old, new, keys)
        if diffs and not overwrite:
            raise InputError(f"{workdir} holds results of a different config ({diffs[0]}"
                             f"{'; ...' if len(diffs) > 1 else ''}); use a new --workdir or "
                             f"pass --overwrite to delete them")
    import jax

    primary = jax.process_index() == 0  # the other hosts of a multi-host run share the workdir
    if primary:
        lock_workdir(workdir)
    if diffs:
        for d in RESULT_DIRS:
            shutil.rmtree(workdir / d, ignore_errors=True)
        logging.warning("deleted the results of a different config in %s", workdir)
    if primary:
        atomic.sweep(workdir)
    atomic.write_text(path, json.dumps(new, indent=2) + "\n")


_LOCKS = {}  # workdir -> open lock file: a lock lasts as long as its process, however it ends


def lock_workdir(workdir: Path) -> None:
    """Takes ``workdir/.lock`` for this process, or raises :class:`InputError` naming the
    process that holds it. The operating system releases it when the process ends, even by
    SIGKILL, so a killed run never leaves a stale lock. (POSIX only; elsewhere a no-op.)"""
    try:
        import fcntl
    except ImportError:
        return
    key = str(workdir.resolve())
    if key in _LOCKS:  # this process holds it already
        return
    workdir.mkdir(parents=True, exist_ok=True)
    f = open(workdir / ".lock", "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise InputError(f"{workdir} is in use by a running command ({holder}); wait for it "
                         f"to end or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _LOCKS[key] = f


def load_workdir_config(workdir: Path):
    """The config a workdir was made with (for commands that only read a workdir)."""
    import ml_collections

    path = workdir / "config.json"
    if not path.exists():
        raise InputError(f"{path}: not found; is {workdir} a pretrain or compare workdir?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})")


def run(main: Callable, needs_config: bool = True) -> None:
    """Parses the flags and calls ``main(config, workdir)`` with errors mapped to exit 2."""

    def _main(argv):
        # absl's INFO stream carries orbax's and jax's chatter; the pipelines report through
        # :func:`log` (tqdm-safe) instead.
        logging.set_verbosity(logging.WARNING)
        enable_compilation_cache()
        parallel.initialize_distributed()
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        if not _WORKDIR.value:
            fail("--workdir: required")
        config = _CONFIG.value
        if config is None and needs_config:
            fail("--config: required, e.g. --config=configs/mnist.py:quick")
        try:
            if config is not None:
                cfglib.validate(config)
            main(config, Path(_WORKDIR.value))
        except InputError as e:
            fail(str(e))
        except FloatingPointError as e:  # divergence: the message names where; exit 3
            fail(str(e), status=3)
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to resume", status=130)

    app.run(_main, flags_parser=_parse_flags)


def enable_compilation_cache() -> Path | None:
    """Keeps every compiled XLA program on disk, so a rerun (a resume after a kill, another
    seed, the next preset) loads it instead of compiling again: a smoke pretrain starts in
    9 s instead of 37 s on 2 CPU cores. JAX keys each entry on the program, the compile options,
    the devices and its own version, so a stale entry is never used. The folder is
    ``$JAX_COMPILATION_CACHE_DIR`` or ``<SCAE_CACHE_DIR or ~/.cache/scae>/xla``;
    ``SCAE_COMPILATION_CACHE=0`` turns it off. Returns the folder in use."""
    import jax

    from scae import data

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
        # JAX's default (1 s) skips the many small programs that together cost most of a
        # short run's start-up.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return Path(folder)


def log(message: str) -> None:
    """One progress line on stderr that does not break the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def overwrite() -> bool:
    return _OVERWRITE.value
