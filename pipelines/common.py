"""What every command shares: flags, config checks, the workdir guard and the exit-2 errors.

Each pipeline is ``common.run(main)`` with ``main(config, workdir)``; a bad flag, config file,
config value or data file ends with one line on stderr and exit status 2, before anything in
the workdir is written.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

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


def fail(message: str, status: int = 2) -> None:
    """Ends the process with one line on stderr."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(status)


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":", 1)[0]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    path = _config_path(argv)
    if path is not None and not Path(path).is_file():
        fail(f"--config: {path}: no such config file")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        # A config file's own InputError arrives wrapped in a traceback; keep its message.
        if "InputError: " in message:
            message = message.rsplit("InputError: ", 1)[1]
        fail(message)
    except InputError as e:
        fail(str(e))
    except (FileNotFoundError, SyntaxError, ImportError, AttributeError) as e:
        fail(f"--config: cannot load the config file: {e}")


def config_dict(config) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(config.to_json())


def _differences(old: dict, new: dict, keys: Sequence[str], prefix: str = "") -> list[str]:
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, sorted(set(a) | set(b)), f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the workdir, {b!r} now")
    return out


def guard_workdir(config, workdir: Path, keys: Sequence[str], overwrite: bool) -> None:
    """Refuses a workdir whose results came from a config that differs in ``keys``.

    With ``overwrite`` the old results are deleted instead. Then writes ``config.json``.
    """
    path = workdir / "config.json"
    new = config_dict(config)
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
        if diffs:
            for d in RESULT_DIRS:
                shutil.rmtree(workdir / d, ignore_errors=True)
            logging.warning("deleted the results of a different config in %s", workdir)
    atomic.write_text(path, json.dumps(new, indent=2) + "\n")


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


def log(message: str) -> None:
    """One progress line on stderr that does not break the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def overwrite() -> bool:
    return _OVERWRITE.value
