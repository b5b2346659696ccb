"""A workdir's integrity: which settings made its records, what a new config may reuse, the
lock, and the checks that run before anything in it is written.

A workdir holds the results of *stages*: ``pretrain`` (the stack: ``pretrain/``) and
``compare`` (the fine-tuning runs: ``compare/``), or ``filters`` (the filter experiment's
variant folders and ``filters.png``). Each stage's records depend on some config sections:

* ``pretrain``: ``seed``, ``data``, ``model`` (less the keys only the CNN's head reads,
  :data:`HEAD_KEYS`), ``pretrain``;
* ``compare``: those, plus ``finetune``, ``compare`` and ``dataset``, except
  ``compare.label_sizes``, ``compare.num_seeds`` and ``compare.arms``, which only *select*
  runs: every run record names its label size, arm and seed, so asking for more keeps the
  finished runs and adds the new ones, and asking for fewer reports only the runs still asked
  (the others stay on disk, unreported, and count again if asked again);
* ``filters``: ``seed``, ``data``, ``model`` (less :data:`HEAD_KEYS`), ``pretrain``,
  ``variants``.

Keys that say how to run rather than what to compute (:data:`NEUTRAL`) are left out.

Each stage's folder holds ``settings.json``, the exact settings its records were made with
(with :func:`settings_digest`, which the records also carry); a filter-experiment workdir holds
that one stage, and its ``config.json`` records it. ``config.json`` is the config
the workdir's records describe: a command that runs one stage keeps the recorded sections of
the other stages it leaves in place (pretrain run on a compared workdir keeps describing the
compare runs' fine-tuning). Workdirs from before ``settings.json`` existed fall back on
``config.json``.

:func:`guard` compares every stage that has results with the new config and the data it is
given (a fingerprint of the data's content, which each stage's ``settings.json`` records: data
replaced at the same path is other data). A stage the command
uses or writes that was made with other settings is *stale*: the command stops with one line
naming the differing keys, their old and new values and the remedy, or, with ``--overwrite``,
deletes only the stale stages (and what was computed from them): a still-valid stack is kept
when only fine-tuning settings changed. A workdir holds one kind of work: the filter experiment
never shares one with pretrain and compare (each would relabel the other's ``config.json``).

Commands and the Python API (:func:`claimed`) go through the same check and the same lock;
commands that only read a workdir take the lock shared (:func:`hold`), and every file a command
writes outside a workdir is checked first (:func:`check_output`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from scae import atomic
from scae.errors import InputError

SETTINGS_FILE = "settings.json"
# Keys that say how to run, not what to compute: results made with other values (or before
# the key existed) are the same experiment.
NEUTRAL = frozenset({"pretrain.divergence_retries", "finetune.divergence_retries",
                     "compare.vmap_seeds", "compare.seed_batching", "data.tfds_data_dir",
                     "pretrain.cache_features", "pretrain.checkpoint_seconds",
                     "finetune.checkpoint_seconds", "compare.spread"})
# Keys that select which runs of a stage are asked for; each record names its own.
SELECTION = frozenset({"compare.label_sizes", "compare.num_seeds", "compare.arms"})
DERIVED = ("figures",)  # drawn from the other stages; deleted whenever one of them is


@dataclasses.dataclass(frozen=True)
class Stage:
    """A unit of a workdir's results and the config sections it depends on."""

    name: str
    sections: tuple[str, ...]  # every section its records depend on, upstream ones included
    own: tuple[str, ...]  # the sections it adds to its upstream stage's
    upstream: tuple[str, ...] = ()
    # Keys of those sections its records do not depend on (dotted names).
    ignores: frozenset[str] = frozenset()


# The keys of the model section that only the CNN's head reads: a stack is the same stack
# whatever the classifier fine-tuned on top of it, so changing them keeps it.
HEAD_KEYS = frozenset({"model.dropout", "model.fc_width", "model.num_classes"})

STAGES = {
    "pretrain": Stage("pretrain", ("seed", "data", "model", "pretrain"),
                      ("seed", "data", "model", "pretrain"), ignores=HEAD_KEYS),
    "compare": Stage("compare", ("seed", "data", "model", "pretrain", "finetune", "compare",
                                 "dataset"), ("finetune", "compare", "dataset"), ("pretrain",)),
    "filters": Stage("filters", ("seed", "data", "model", "pretrain", "variants", "dataset"),
                     ("seed", "data", "model", "pretrain", "variants", "dataset"),
                     ignores=HEAD_KEYS),
}
# The stages each stage's command reads or writes (compare pretrains first if needed).
USES = {"pretrain": ("pretrain",), "compare": ("pretrain", "compare"), "filters": ("filters",)}


def config_dict(config) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    return json.loads(config.to_json())


def _strip(tree: dict, prefix: str = "", ignore: frozenset[str] = frozenset()) -> dict:
    """``tree`` without the neutral and selection keys, and the keys in ``ignore``."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if name in NEUTRAL or name in SELECTION or name in ignore:
            continue
        out[k] = _strip(v, f"{name}.", ignore) if isinstance(v, dict) else v
    return out


def _sections(full: dict, stage: str) -> dict:
    return {s: full[s] for s in STAGES[stage].sections if s in full}


def stage_settings(config, stage: str) -> dict:
    """The settings ``stage``'s records depend on: its config sections (upstream ones
    included) less the neutral and selection keys, as plain JSON types."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return _strip(_sections(config_dict(config), stage), ignore=STAGES[stage].ignores)


def settings_digest(config, stage: str) -> str:
    """A short hash of :func:`stage_settings`: equal digests, same settings. Records carry it
    so that a reader can tell which settings made each of them."""
    text = json.dumps(stage_settings(config, stage), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_ABSENT = object()


def _differences(old, new, defaults=None, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, old, new) for every leaf that differs. A key the old record lacks counts as
    equal when the new value is the key's default: the key was added to the code later, and
    its default keeps what the code did before."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = defaults.get(k, _ABSENT) if isinstance(defaults, dict) else _ABSENT
            out += _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), sub, f"{prefix}{k}.")
        return out
    if old is _ABSENT and defaults is not _ABSENT and new == defaults:
        return []
    if old == new:
        return []
    return [(prefix.rstrip("."), None if old is _ABSENT else old, None if new is _ABSENT else new)]


def _defaults(config) -> dict:
    """The defaults of every config key, as plain JSON types."""
    from scae import config as cfglib

    return config_dict(cfglib.base_config(config_dict(config).get("dataset", "mnist")))


def without_defaults(config) -> dict:
    """``config`` as plain JSON types without the keys that hold their default: what sets it
    apart. A key added to the code later, whose default keeps what the code did before, then
    leaves a digest of it as it was (as :func:`_differences` treats such keys)."""
    def strip(tree, defaults):
        out = {}
        for k, v in tree.items():
            d = defaults.get(k, _ABSENT) if isinstance(defaults, dict) else _ABSENT
            if isinstance(v, dict) and isinstance(d, dict):
                out[k] = strip(v, d)
            elif v != d:
                out[k] = v
        return out

    return strip(config_dict(config), _defaults(config))


def _show(value) -> str:
    return "absent" if value is None else json.dumps(value)


def asked_runs(config, rows: Sequence[dict]) -> list[dict]:
    """The run records of ``rows`` that ``config`` asks for and that its settings made: label
    size in ``compare.label_sizes``, arm in ``compare.arms``, seed below ``compare.num_seeds``,
    and (for records that carry one) ``settings`` equal to the compare stage's digest. What a
    summary reports, so that shrinking a selection never mixes in runs no longer asked, and a
    record of other settings is never counted."""
    c = config.compare
    sizes, arms = set(c.label_sizes), set(c.arms)
    digest = settings_digest(config, "compare")
    return [r for r in rows
            if r.get("label_size") in sizes and r.get("arm") in arms
            and isinstance(r.get("seed"), int) and 0 <= r["seed"] < c.num_seeds
            and r.get("settings", digest) == digest]


# --- where each stage's results and settings live ------------------------------------------


def _folders(stage: str, workdir: Path, recorded: dict | None) -> list[Path]:
    """The files and folders holding ``stage``'s results."""
    if stage == "filters":
        names = set((recorded or {}).get("variants") or {})
        return [workdir / n for n in sorted(names)] + [workdir / "filters.png"]
    return [workdir / stage]


def _has_results(stage: str, workdir: Path, recorded: dict | None) -> bool:
    for path in _folders(stage, workdir, recorded):
        if path.is_file():
            return True
        if path.is_dir() and any(p.name != SETTINGS_FILE for p in path.iterdir()):
            return True
    return False


def _settings_path(workdir: Path, stage: str) -> Path:
    """Where ``stage``'s settings.json lives: in its folder (an API fine-tuning cell's in the
    cell's), or for the filter experiment (whose results are one folder per variant) beside
    config.json."""
    if stage == "filters":
        return workdir / f"filters_{SETTINGS_FILE}"
    return workdir / stage / SETTINGS_FILE


_OTHER_DATA = "other data"


class _Workdir:
    """What a workdir records, read once."""

    def __init__(self, workdir: Path):
        self.path = workdir
        self.config_error = None
        self.config = None
        config_path = workdir / "config.json"
        if config_path.exists():
            try:
                value = json.loads(config_path.read_text())
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
                self.config = value
            except (OSError, ValueError) as e:
                self.config_error = f"{config_path}: unreadable ({' '.join(str(e).split())})"

    def recorded(self, stage: str) -> dict | None:
        """The full config sections ``stage``'s records were made with, or None if unknown."""
        value = atomic.read_json(_settings_path(self.path, stage))
        if isinstance(value, dict) and isinstance(value.get("sections"), dict):
            return value["sections"]
        return None if self.config is None else _sections(self.config, stage)

    def data_changed(self, stage: str, data: DataFingerprint) -> str | None:
        """Why ``stage``'s results were made from other data than ``data``, or None when the
        same (or unknown: a workdir older than data fingerprints, with no run record either)."""
        value = atomic.read_json(_settings_path(self.path, stage))
        known = value.get("data") if isinstance(value, dict) else None
        if isinstance(known, dict) and known.get("digest"):
            if known["digest"] == data.digest:
                return None
            return (f"{_OTHER_DATA}: {data.name} is not the data these results were made from "
                    f"(content {str(known['digest'])[:12]} in the workdir, {data.digest[:12]} "
                    f"now; a file replaced at the same path is other data)")
        if stage == "compare" and data.test:
            runs = atomic.read_jsonl(self.path / "compare" / "runs.jsonl")
            old = {r.get("data_fingerprint") for r in runs} - {None, ""}
            if old and old != {data.test}:
                return (f"{_OTHER_DATA}: the test split of {data.name} is not the one these "
                        f"runs were evaluated on (their data_fingerprint differs)")
        return None

    def has_results(self, stage: str) -> bool:
        return _has_results(stage, self.path, self.recorded(stage) or self.config)


# --- the checks before the lock ------------------------------------------------------------


def check_writable(workdir: Path, flag: str = "--workdir") -> None:
    """Raises :class:`InputError` unless ``workdir`` is (or can be made) a writable folder
    whose result paths are what they should be: not a file, not under a file, not read-only,
    and ``pretrain``, ``compare``, ``figures`` folders and ``config.json`` a file. ``flag``
    names the workdir in messages ('--workdir' for a command, 'workdir' for the API)."""
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"{flag} {workdir}: is a file; expected a folder")
    where = f"{flag} {workdir}"
    _probe_writable(_nearest_folder(workdir, where), where, f"; use another {flag}")
    for name in ("pretrain", "compare", "figures", "finetune"):
        p = workdir / name
        if p.exists() and not p.is_dir():
            raise InputError(f"{p}: is a file, expected the folder of {name} results; move it "
                             f"away or use another {flag}")
    for name in ("config.json", ".lock"):
        p = workdir / name
        if p.is_dir():
            raise InputError(f"{p}: is a folder, expected a file; move it away or use another "
                             f"{flag}")


# --- the guard ------------------------------------------------------------------------------



def stale_stages(config, workdir: Path, stage: str,
                 data: DataFingerprint | None = None) -> dict[str, list[str]]:
    """The stages with results in ``workdir`` that a ``stage`` command must not reuse, each
    with the reasons (differing keys with old and new values, or other data). Includes the
    stages computed from a stale one (compare from a stale stack)."""
    w = _Workdir(workdir)
    stale: dict[str, list[str]] = {}
    for s in USES[stage]:
        if not w.has_results(s):
            continue
        recorded = w.recorded(s)
        if recorded is None:
            stale[s] = [w.config_error or f"{workdir}: no record of the settings of {s}/"]
            continue
        diffs = _differences(_strip(recorded, ignore=STAGES[s].ignores),
                             stage_settings(config, s), _defaults(config))
        if diffs:
            stale[s] = [f"{k}: {_show(a)} in the workdir, {_show(b)} now" for k, a, b in diffs]
        elif data is not None and (changed := w.data_changed(s, data)):
            stale[s] = [changed]
    for s, st in STAGES.items():  # what was computed from a stale stage goes with it
        if s not in stale and any(u in stale for u in st.upstream) and w.has_results(s):
            stale[s] = [f"made from the stale {', '.join(u for u in st.upstream if u in stale)}"]
    return stale


def data_changed(workdir: str | os.PathLike, data: DataFingerprint,
                 stages: Sequence[str] = ("pretrain", "compare")) -> str | None:
    """Why the results of ``stages`` in ``workdir`` were made from other data than ``data``
    (compared by content, as each stage's settings.json records it), or None: for a command
    that reads a workdir's results with data it loads again (figures of a stack drawn from
    other images would pass for its own)."""
    w = _Workdir(Path(workdir))
    for s in stages:
        if w.has_results(s) and (why := w.data_changed(s, data)):
            return why
    return None


@dataclasses.dataclass(frozen=True)
class DataFingerprint:
    """What a stage's records were computed from: ``name`` says which data in a message (the
    data source, or "the images"), ``digest`` is a hash of their content (see
    ``scae.provenance.data_digest``), ``test`` the test split's content fingerprint that run
    records carry as ``data_fingerprint`` (checked for workdirs whose settings.json predates
    ``digest``)."""

    name: str
    digest: str
    test: str = ""


def _foreign(w: _Workdir, stage: str) -> str | None:
    """The stages of another kind of work that ``w`` holds results of, which a ``stage``
    command must not share the workdir with, as 'pretrain/ and compare/'; or None."""
    family = ("filters",) if stage == "filters" else ("pretrain", "compare")
    others = [s for s in STAGES if s not in family and w.has_results(s)]
    if not others:
        return None
    return " and ".join("filter-experiment (filters.png, variant folders)" if s == "filters"
                        else f"{s}/" for s in others)


def guard(config, workdir: str | os.PathLike, stage: str, overwrite: bool,
          data: DataFingerprint | None = None, *, overwrite_hint: str = "pass --overwrite",
          new_workdir: str = "--workdir") -> None:
    """Makes ``workdir`` ready for a command that runs ``stage``, or refuses it.

    Before anything is written: refuses a workdir that is a file, lies under a file or is
    read-only, one that holds another kind of work (a filter experiment and a pretrain or
    compare workdir), and one whose results of a stage this command uses or writes were made
    with other settings or from other ``data`` (one line naming the keys, old and new values,
    or the data, and the remedy). With ``overwrite`` those stale results are deleted instead,
    and only they. Then takes the workdir's lock, sweeps what killed writes left, and records
    the settings (``settings.json`` of each stage written, with the data's fingerprint, and
    ``config.json``). ``overwrite_hint`` and ``new_workdir`` word the remedy for the caller
    (the API has no flags).
    """
    workdir = Path(workdir)
    if stage not in USES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(USES)}")
    check_writable(workdir, new_workdir)
    foreign = _foreign(_Workdir(workdir), stage)
    if foreign:
        what = "a filter experiment" if stage == "filters" else f"{stage} results"
        raise InputError(f"{workdir} holds {foreign} results of another command; {what} "
                         f"cannot share a workdir with them (each would mislabel the other's "
                         f"config.json): use a new {new_workdir}")
    stale = stale_stages(config, workdir, stage, data)
    if stale and not overwrite:
        first = next(iter(stale))
        reasons = stale[first]
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3
                                         else "")
        kept = [s for s in ("pretrain",) if s not in stale and (workdir / s).is_dir()]
        what = ("results made from other data" if any(r.startswith(_OTHER_DATA) for r in reasons)
                else "results of a different config")
        raise InputError(
            f"{workdir} holds {what} ({first}: {shown}); {overwrite_hint} to delete the stale "
            f"{' and '.join(f'{s}/' for s in stale)} results"
            f"{' (' + ', '.join(f'{s}/' for s in kept) + ' is kept)' if kept else ''}, or use "
            f"a new {new_workdir}")
    if atomic.writer():  # the other processes of a multi-process run share the workdir
        lock(workdir, flag=new_workdir)
        w = _Workdir(workdir)
        if stale:
            for s in stale:
                for path in _folders(s, workdir, w.recorded(s) or w.config):
                    atomic.remove_tree(path)
            for name in DERIVED:
                atomic.remove_tree(workdir / name)
            from absl import logging

            logging.warning("deleted the stale %s results in %s", ", ".join(stale), workdir)
        atomic.sweep(workdir)
        _record(config, workdir, stage, _Workdir(workdir), data)


def _record(config, workdir: Path, stage: str, w: _Workdir,
            data: DataFingerprint | None = None) -> None:
    """Writes the settings of the stages ``stage`` writes (with the data's fingerprint), and
    config.json as the config the workdir's records describe."""
    full = config_dict(config)
    uses = USES[stage]
    for s in uses:
        record = {"stage": s, "digest": settings_digest(config, s), "sections": _sections(full, s)}
        if data is not None:
            record["data"] = {"name": data.name, "digest": data.digest}
        elif isinstance(old := atomic.read_json(_settings_path(workdir, s)), dict) \
                and isinstance(old.get("data"), dict):
            record["data"] = old["data"]  # a caller that gave no data keeps what is known
        atomic.write_text(_settings_path(workdir, s), json.dumps(record, indent=2) + "\n")
    described = dict(full)
    for s, st in STAGES.items():  # stages left in place keep describing their records
        if s in uses or not w.has_results(s):
            continue
        recorded = w.recorded(s)
        if recorded is not None:
            for section in st.own:
                if section in recorded:
                    described[section] = recorded[section]
    atomic.write_text(workdir / "config.json", json.dumps(described, indent=2) + "\n")


# --- the lock -------------------------------------------------------------------------------

_LOCKS = {}  # workdir -> open lock file: a lock lasts as long as its process, however it ends
# workdir -> the thread that took it: the lock file is the process's, so without this a second
# thread (two API calls on one workdir) would pass as its holder and write beside the first.
_OWNERS: dict[str, int] = {}
_TRIES = 10  # how often lock() takes the file again when its last holder removed it meanwhile


def lock(workdir: str | os.PathLike, shared: bool = False, flag: str = "--workdir") -> None:
    """Takes ``workdir/.lock`` for this process, or raises :class:`InputError` naming the
    process that holds it. The operating system releases it when the process ends, even by
    SIGKILL, so a killed run never leaves a stale lock; a process that ends otherwise removes
    the file as it goes (:func:`release`, at exit). (POSIX only; elsewhere a no-op.)

    ``shared``: for a command that only reads the workdir: any number of readers at once, but
    never beside a command that writes it (which takes the lock alone). A reader of a workdir
    where no lock file can be made (a read-only copy) reads without one: nothing else can write
    there either."""
    try:
        import fcntl
    except ImportError:
        return
    if not atomic.writer():  # a multi-process run: process 0 holds it for all of them
        return
    workdir = Path(workdir)
    key = str(workdir.resolve())
    if key in _LOCKS:
        if _OWNERS.get(key) == threading.get_ident():  # this thread holds it already
            return
        raise InputError(f"{workdir} is in use by another thread of this process (pid "
                         f"{os.getpid()}); wait for its call to end or use another {flag}")
    for _ in range(_TRIES):
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            f = open(workdir / ".lock", "a+")  # noqa: SIM115 - held open while the lock is held
        except OSError as e:
            if shared and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return
            raise InputError(f"{flag} {workdir}: cannot take its lock ({e.strerror or e}); "
                             f"use another {flag}") from None
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise InputError(f"{workdir} is in use by a running command ({holder}); wait for "
                             f"it to end or use another {flag}") from None
        # The holder before us may have removed the file as it let go, after we opened it: a
        # lock on that file locks nothing, so take the one now at the path.
        if _is_at(f, workdir / ".lock"):
            break
        f.close()
    else:
        raise InputError(f"{flag} {workdir}: cannot take its lock (its file keeps being "
                         f"replaced); use another {flag}")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _LOCKS[key] = f
    _OWNERS[key] = threading.get_ident()


def _is_at(f, path: Path) -> bool:
    """Whether the open file ``f`` is the file at ``path``."""
    try:
        mine, there = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def release(workdir: str | os.PathLike) -> None:
    """Gives back this process's lock of ``workdir`` (a command's at exit; the Python API's when
    its call ends) and removes the lock file, unless another process holds it too (a reader
    beside a reader); a no-op when not held.

    Only a holder removes the file, while it still holds the lock alone, so a process waiting
    to take it either finds it held or takes the new file :func:`lock` then makes."""
    key = str(Path(workdir).resolve())
    f = _LOCKS.pop(key, None)
    _OWNERS.pop(key, None)
    if f is None:
        return
    import fcntl  # held, so POSIX

    path = Path(key) / ".lock"
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone: no other reader holds it
        if _is_at(f, path):
            path.unlink()
    except OSError:  # another holder (it removes the file), or nothing left to remove
        pass
    f.close()


def release_all() -> None:
    """Gives back every lock this process holds (at exit)."""
    for key in list(_LOCKS):
        release(key)


atexit.register(release_all)


def hold(workdir: str | os.PathLike, write: bool = True) -> None:
    """Takes the lock of an existing workdir for a command that reads it (``write``: and draws
    figures into it, then alone, after sweeping what killed writes left), so that it never
    sees another command's half-written state: refuses a workdir that does not exist, is not
    a folder (or, to write, not a writable one), or is in use."""
    workdir = Path(workdir)
    if not workdir.exists():
        raise InputError(f"--workdir {workdir}: not found")
    if not workdir.is_dir():
        raise InputError(f"--workdir {workdir}: is a file; expected a folder")
    if write:
        check_writable(workdir)
    lock(workdir, shared=not write)
    if write:
        atomic.sweep(workdir)


@contextlib.contextmanager
def claimed(config, workdir: str | os.PathLike, stage: str,
            data: DataFingerprint | None = None) -> Iterator[Path]:
    """:func:`guard` for a caller of the Python API (``scae.api.pretrain(..., workdir=W)``):
    the same settings and data check as the commands (another config or other images refused
    with :class:`InputError` naming the differing keys or the data; never the old results
    returned silently), the same lock, given back when the block ends unless this process
    held it before."""
    workdir = Path(workdir)
    held = _held_here(workdir)
    guard(config, workdir, stage, overwrite=False, data=data,
          overwrite_hint="delete that workdir (or the stale folders)", new_workdir="workdir")
    try:
        yield workdir
    finally:
        if not held:
            release(workdir)


def _held_here(workdir: Path) -> bool:
    """Whether this thread holds ``workdir``'s lock already (an outer call of the API)."""
    return _OWNERS.get(str(workdir.resolve())) == threading.get_ident()


@contextlib.contextmanager
def claimed_cell(config, workdir: str | os.PathLike, cell: str,
                 inputs: dict[str, object]) -> Iterator[Path]:
    """:func:`claimed` for one fine-tuning cell of the Python API (``scae.finetune(...,
    workdir=W)`` trains ``W/finetune/<cell>``, which a rerun resumes): the lock for as long
    as the block runs, and the cell's identity, recorded in its ``settings.json``: the compare
    stage's settings and ``inputs`` (what else the runs were computed from: digests of the
    arrays and of the stack, the seeds; JSON values). A cell with results made from anything
    else is refused, naming what differs, instead of its old runs coming back as the new
    call's; so is a cell with results but no record of what made them."""
    workdir = Path(workdir)
    check_writable(workdir, "workdir")
    held = _held_here(workdir)
    lock(workdir, flag="workdir")
    try:
        path = workdir / "finetune" / cell
        record = _settings_path(workdir, f"finetune/{cell}")
        new = {"sections": stage_settings(config, "compare"), "inputs": config_dict(inputs)}
        if path.is_dir() and any(p.name != SETTINGS_FILE for p in path.iterdir()):
            old = atomic.read_json(record)
            if not isinstance(old, dict) or not isinstance(old.get("sections"), dict):
                raise InputError(f"{path} holds fine-tuning results with no record of what "
                                 f"made them; delete that folder or use another workdir")
            diffs = _differences(_strip(old["sections"]), new["sections"], _defaults(config))
            reasons = [f"{k}: {_show(a)} in the workdir, {_show(b)} now" for k, a, b in diffs]
            recorded = old.get("inputs") if isinstance(old.get("inputs"), dict) else {}
            reasons += [f"{k}: {_show(recorded.get(k))} in the workdir, {_show(v)} now"
                        for k, v in new["inputs"].items() if recorded.get(k) != v]
            if reasons:
                shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more"
                                                 if len(reasons) > 3 else "")
                raise InputError(f"{path} holds fine-tuning runs made from other settings or "
                                 f"inputs ({shown}); delete that folder or use another workdir")
        path.mkdir(parents=True, exist_ok=True)
        atomic.sweep(path)
        atomic.write_text(record, json.dumps(new, indent=2) + "\n")
        yield path
    finally:
        if not held:
            release(workdir)


def check_output(path: str | os.PathLike, flag: str, folder: bool = False,
                 files: Sequence[str] = ()) -> Path:
    """Raises :class:`InputError` unless ``path``, a file a command writes outside its workdir
    (or with ``folder``, a folder it writes ``files`` into), can be written: not a folder where
    a file must go (nor a file where a folder must), not under a file, not in a read-only or
    unwritable folder. Called before anything is written, so that the output path is one line
    and exit 2, never a traceback after the work. Returns ``path``."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file; expected a folder (or a new name)")
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; expected a file name, e.g. "
                         f"{path / 'out.npz' if flag == '--output' else path / 'file'}")
    existing = _nearest_folder(path.parent if not folder else path, f"{flag} {path}")
    for name in files:
        if (path / name).is_dir():
            raise InputError(f"{flag} {path}: {path / name} is a folder, expected a file; move "
                             f"it away or use another {flag}")
    _probe_writable(existing, f"{flag} {path}")
    return path


def _nearest_folder(path: Path, where: str) -> Path:
    """The nearest existing folder at or above ``path`` (where a write would be made), or an
    :class:`InputError` beginning with ``where`` for a dangling link or a file on the way."""
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise InputError(f"{where}: {existing} is a dangling symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{where}: lies under {existing}, which is a file")
    return existing


def _probe_writable(folder: Path, where: str, hint: str = "") -> None:
    """An :class:`InputError` beginning with ``where`` unless a file can be made in ``folder``
    (a read-only file system, missing permissions)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        cause = "read-only file system" if e.errno == errno.EROFS else \
            (os.strerror(e.errno) if e.errno else str(e)).lower()
        raise InputError(f"{where}: cannot write in {folder} ({cause}){hint}") from None


def load_config(workdir: str | os.PathLike):
    """The config a workdir's records describe (for commands that only read a workdir)."""
    import ml_collections

    workdir = Path(workdir)
    path = workdir / "config.json"
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir}: is a file; expected a folder")
    if not path.exists():
        raise InputError(f"{path}: not found; is {workdir} a pretrain or compare workdir?")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object (a config), got "
                         f"{type(value).__name__}")
    return ml_collections.ConfigDict(value)
