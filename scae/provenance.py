"""Where the numbers come from: which data set a test split is (by content, not by name), and
which machine a run was measured on.

The paper's figures are shown beside ours only when the test split is the paper's. A config
file's name says nothing about that (``configs/mnist.py`` runs on any 28x28 source), so
:func:`identify` looks at the test images and labels themselves:

1. an exact content fingerprint of a known copy: the official MNIST test set (the embedded
   copy, or any pixel-exact copy of the official files, whatever its format or order), or
   the JPEG copy of the CIFAR-10 test set that the project's development data holds (every
   image re-encoded at JPEG quality 75: the paper's test set, but not pixel for pixel);
2. otherwise, a low-resolution signature of the test set (each class's mean image in
   4x4-pixel blocks, ``assets/test_signatures.npz``), close to that of a known test set: a
   re-encoded or otherwise re-packaged copy, such as the original CIFAR-10 binary release,
   whose exact fingerprint could not be computed here (no copy of it was at hand). Such a copy
   counts as the paper's test set but is marked not verified. A different set of images of the
   same classes (CIFAR-10's training images, say) differs in these means by about twice the
   threshold;
3. otherwise an unknown data set: titled by its source, with no paper figures.

The fingerprint ignores the order of the examples (the folder reader shuffles, tfds may
order differently) and covers every pixel and label, so a test split cut to its first N
images (``data.test_size``) is not the paper's test set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from scae import accounting

# Known test sets: key -> (display name, number of test images).
TEST_SETS = {"mnist": ("MNIST", 10000), "cifar10": ("CIFAR-10", 10000)}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@dataclasses.dataclass(frozen=True)
class KnownCopy:
    """One exact copy of a known test set, recognised by :func:`fingerprint`."""

    paper_key: str
    title: str
    exact: bool  # pixel for pixel the paper's test set
    note: str


# Fingerprints measured with this module's fingerprint() on scae/assets/mnist.npz (equal to
# that of ../shared/data/mnist.npz, which was checked against the official IDX files) and on
# data.load('folder:cifar10-jpeg.tar.gz', 'test').
KNOWN_COPIES: dict[str, KnownCopy] = {
    "4ed62d6d4c3575ed6bc45ef52c0b58e5de537511cf0806ce5adf35a4a4d6fba9": KnownCopy(
        "mnist", "MNIST", True,
        "the official MNIST test set (10,000 digits), identical by content fingerprint"),
    "ce457a6855e4b38728472f151bf03fc3c10b5a21d1dc34efdf0de560242f007d": KnownCopy(
        "cifar10", "CIFAR-10 (JPEG copy)", False,
        "the CIFAR-10 test set re-encoded as JPEG at quality 75 (JPEG copy, not exact): the "
        "paper's test images, but pixels differ slightly from the original release"),
}
# Root-mean-square difference, in grey levels (0..255), between a test set's signature and a
# known one below which it counts as a copy of that test set. Measured: re-encoding the
# CIFAR-10 JPEG copy at JPEG quality 95, 75 and 50 moves its signature by 0.08, 0.04 and 0.26;
# encoding the exact MNIST test set as JPEG at quality 95, 75 and 50 moves it by 0.36, 1.40
# and 1.96 (sharp strokes on black suffer most). Other images of the same classes are far
# off: 10,000 training images are 2.7 (CIFAR-10) and 3.1 to 3.3 (MNIST) away.
SIGNATURE_TOLERANCE = 1.5
SIGNATURE_BLOCK = 4  # each class mean image is averaged over blocks of 4x4 pixels


@dataclasses.dataclass(frozen=True)
class DataIdentity:
    """What a test split is: ``title`` names it in tables and figures; ``paper_key`` is the key
    of the paper's figures (:data:`scae.report.stats.PAPER`) when the split is the paper's test set,
    else None; ``exact`` whether it is that set pixel for pixel; ``note`` says how this was
    decided (one sentence for the summary)."""

    title: str
    paper_key: str | None
    exact: bool
    note: str
    fingerprint: str = ""

    def to_record(self) -> dict:
        """The fields a run record carries (see :func:`from_record`)."""
        return {"data_title": self.title, "paper_key": self.paper_key, "data_exact": self.exact,
                "data_note": self.note, "data_fingerprint": self.fingerprint}


LEGACY_NOTE = ("recorded before test splits were identified by content; taken to be the "
               "paper's test set as the config named it")


def from_record(record: Mapping) -> DataIdentity:
    """The identity a run record carries; records written before identities existed carry
    only ``dataset`` ('mnist' or 'cifar10', the config's name), which is taken at its word."""
    if "data_title" in record:
        return DataIdentity(str(record["data_title"]), record.get("paper_key"),
                            bool(record.get("data_exact", False)),
                            str(record.get("data_note", "")),
                            str(record.get("data_fingerprint", "")))
    name = str(record.get("dataset", ""))
    if name in TEST_SETS:
        return DataIdentity(TEST_SETS[name][0], name, False, LEGACY_NOTE)
    return DataIdentity(name or "unknown data", None, False, "")


def _canonical(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(np.asarray(images), dtype=np.uint8)
    if images.ndim == 3:  # (N, H, W) grey images, as some files store them
        images = images[..., None]
    labels = np.asarray(labels).astype("<i8").reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"expected images (N, H, W, C) and labels (N,), got {images.shape} "
                         f"and {labels.shape}")
    return images, labels


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a labelled image set's content, independent of the order of its examples.

    Each example's digest covers its label (int64) and its uint8 pixels; the fingerprint is
    the digest of the image shape and the sorted example digests.
    """
    images, labels = _canonical(images, labels)
    digests = sorted(hashlib.sha256(y.tobytes() + x.tobytes()).digest()
                     for x, y in zip(images, labels))
    h = hashlib.sha256("x".join(map(str, images.shape[1:])).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


def data_digest(*arrays: np.ndarray) -> str:
    """A hash of arrays' exact content, shapes and dtypes, in order: what a workdir records of
    the data its results were computed from (:class:`scae.workdir.DataFingerprint`), so that
    other data at the same path is seen. Order counts: the validation split and the labelled
    subsets are drawn by index."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return h.hexdigest()


def signature(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's mean image averaged over 4x4-pixel blocks, (num_classes, H/4, W/4, C)
    float64, in grey levels: what stays of a test set when its pixels change slightly."""
    images, labels = _canonical(images, labels)
    n, h, w, c = images.shape
    b = SIGNATURE_BLOCK
    if h % b or w % b:
        raise ValueError(f"images of {h}x{w}: expected sides divisible by {b}")
    out = np.zeros((num_classes, h // b, w // b, c))
    for k in range(num_classes):
        x = images[labels == k]
        if len(x):
            out[k] = x.reshape(len(x), h // b, b, w // b, b, c).mean((0, 2, 4), dtype=np.float64)
    return out


@functools.cache
def known_signatures() -> dict[str, np.ndarray]:
    """The stored signatures of the known test sets, keyed like :data:`TEST_SETS`."""
    asset = importlib.resources.files("scae") / "assets" / "test_signatures.npz"
    with importlib.resources.as_file(asset) as path, np.load(path) as f:
        return {k: f[k].astype(np.float64) for k in f.files}


def _source_title(source: str) -> str:
    return TEST_SETS[source][0] if source in TEST_SETS else source


def identify(source: str, test_images: np.ndarray, test_labels: np.ndarray) -> DataIdentity:
    """What the test split of ``source`` is, from its content (see the module docstring).

    ``test_images`` (N, H, W, C) uint8 and ``test_labels`` (N,) are the whole test split as
    evaluated (after any ``data.test_size`` cut).
    """
    fp = fingerprint(test_images, test_labels)
    known = KNOWN_COPIES.get(fp)
    if known is not None:
        return DataIdentity(known.title, known.paper_key, known.exact, known.note, fp)
    images, labels = _canonical(test_images, test_labels)
    for key, sig in known_signatures().items():
        name, size = TEST_SETS[key]
        if (images.shape[0] != size or images.shape[1:] != IMAGE_SHAPES[key]
                or labels.min() < 0 or labels.max() >= sig.shape[0]):
            continue
        rms = float(np.sqrt(np.mean((signature(images, labels, sig.shape[0]) - sig) ** 2)))
        if rms < SIGNATURE_TOLERANCE:
            return DataIdentity(
                f"{name} (copy, not pixel-verified)", key, False,
                f"{source}: not a known copy, but its test split matches {name}'s by content "
                f"(per-class mean images within {rms:.2f} grey levels); taken as the paper's "
                f"test set, pixels not verified", fp)
    title = _source_title(source)
    note = f"{source}: not a known test set; no paper figures"
    if source in TEST_SETS and images.shape[0] != TEST_SETS[source][1]:
        title = f"{title} ({images.shape[0]:,} test images)"
        note = (f"{source}: {images.shape[0]:,} of its {TEST_SETS[source][1]:,} test images "
                f"(data.test_size): not the paper's test set; no paper figures")
    return DataIdentity(title, None, False, note, fp)


# ---------------------------------------------------------------------------------------------
# The machine a run was measured on

# The vector extensions that decide CPU speed for XLA's kernels, in /proc/cpuinfo's names.
_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                 "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve", "sve2")


# The instructions that multiply bf16 operands: x86's AVX-512 BF16 and AMX, Arm's BF16.
_BF16_FLAGS = frozenset(("avx512_bf16", "amx_bf16", "bf16"))


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags() -> set[str] | None:
    """Every feature flag /proc/cpuinfo lists for the CPU (x86's ``flags``, Arm's
    ``Features``); None where no such file says (another OS)."""
    text = _cpuinfo()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M) if text else None
    return set(m.group(1).split()) if m else None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` says."""
    text = _cpuinfo() or ""
    for key in ("model name", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def _cpu() -> tuple[str, list[str]]:
    """The CPU model and its vector extensions (from /proc/cpuinfo where there is one)."""
    have = cpu_flags() or set()
    return cpu_model(), [f for f in _VECTOR_FLAGS if f in have]


def cpu_has_bf16() -> bool | None:
    """Whether this CPU has instructions that multiply bf16 operands (avx512_bf16, AMX or
    Arm's bf16), by /proc/cpuinfo; None where no such file says (another OS)."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & _BF16_FLAGS)


def machine(wall_time_s: float | None = None, command: str | None = None) -> dict:
    """A record of the machine running this process: CPU model, vector extensions, cores,
    jax's devices and versions, the code's commit and dirty-tree flag (:func:`git_state`),
    and (when given) the wall time and command measured.

    Written as ``machine.json`` beside a comparison's records, so that a published timing
    names the hardware it was measured on.
    """
    import jax  # here, so that reading identities does not import jax
    import jaxlib

    model, flags = _cpu()
    # device_kind names the accelerator ("NVIDIA H100 80GB HBM3"); on a CPU it just says "cpu".
    devices = [d.platform if getattr(d, "device_kind", d.platform).lower() == d.platform
               else f"{d.device_kind} ({d.platform})" for d in jax.devices()]
    counts: dict[str, int] = {}
    for d in devices:
        counts[d] = counts.get(d, 0) + 1
    out = {
        "cpu": model,
        "cpu_vector_flags": flags,
        "cpu_cores": os.cpu_count(),
        "devices": [f"{n} x {d}" for d, n in counts.items()],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    out.update(git_state())
    if wall_time_s is not None:
        out["wall_time_s"] = round(float(wall_time_s), 1)
    if command is not None:
        out["command"] = command
    return out


def session_record(path: Path, wall_time_s: float, command: str, resumed: bool) -> dict:
    """The :func:`machine` record of this session, with the sessions before it (read from the
    record at ``path``) added up: ``sessions`` and ``total_wall_time_s`` count every session
    that worked on the job, interrupted ones included; ``wall_time_s`` is this session's.
    ``time_breakdown_s`` is where this process's wall time went (:mod:`scae.accounting`),
    start-up included: its parts add up to ``time_breakdown_total_s``."""
    out = machine(wall_time_s, command) | {
        "resumed": resumed, "time_breakdown_s": accounting.breakdown(),
        "time_breakdown_total_s": round(accounting.wall_time(), 3)}
    try:
        old = json.loads(path.read_text()) if resumed else {}
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    before = old.get("total_wall_time_s", old.get("wall_time_s"))
    known = isinstance(before, (int, float)) and not isinstance(before, bool)
    sessions = old.get("sessions", 1) if known else 0
    out["sessions"] = int(sessions) + 1 if isinstance(sessions, int) else 1
    # A session before records were kept: the total is short. So it is when the prior record
    # says so, or is an old one (no session count) of a session that was itself resumed.
    if resumed and (not known or old.get("sessions_unrecorded")
                    or ("sessions" not in old and old.get("resumed"))):
        out["sessions_unrecorded"] = True
    out["total_wall_time_s"] = round(float(before if known else 0.0) + float(wall_time_s), 1)
    devices = list(old.get("devices_of_sessions", old.get("devices", []))) if known else []
    out["devices_of_sessions"] = sorted(set(devices) | set(out["devices"]))
    return out


def describe_machine(m: Mapping) -> str:
    """One line naming a :func:`machine` record's hardware, e.g. for results/README.md."""
    devices = ", ".join(m.get("devices", [])) or "unknown devices"
    flags = m.get("cpu_vector_flags") or []
    cpu = f"{m.get('cpu', 'unknown CPU')} ({m.get('cpu_cores', '?')} cores"
    cpu += f"; {' '.join(flags)})" if flags else ")"
    return f"{cpu}, jax {m.get('jax', '?')} on {devices}"


# ---------------------------------------------------------------------------------------------
# The code a record was made by

_PACKAGE = Path(__file__).resolve().parent


def _git(root: Path, *args: str) -> str | None:
    """git's output in ``root``, or None when git is absent, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# What a record's numbers depend on, relative to the checkout's top: the package, the
# commands, the config files and the project's pins. Results, READMEs and docs are not.
CODE_PATHS = ("scae", "pipelines", "configs", "pyproject.toml")
_PINNED: dict[Path, dict] = {}


def git_state(package: Path = _PACKAGE) -> dict:
    """``git_commit`` (the checkout's HEAD) and ``git_dirty`` (whether tracked files of
    :data:`CODE_PATHS` differ from it) of the git checkout this package was imported from;
    both None when it was not imported from one (an installed copy) or git is absent. Never
    raises: a record without its commit is better than no record. After :func:`pin_git_state`
    it is the state pinned then.

    Untracked files do not count as dirty: a checkout holds workdirs and caches that no
    result depends on, while every module the code imports is tracked. Nor do changes outside
    the code (a README or results/ edited while a run goes on).
    """
    package = Path(package).resolve()
    if package in _PINNED:
        return dict(_PINNED[package])
    top = _git(package, "rev-parse", "--show-toplevel")
    if top is None or (Path(top) / package.name).resolve() != package:
        return {"git_commit": None, "git_dirty": None}
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain", "--untracked-files=no", "--",
                  *(f":(top){p}" for p in CODE_PATHS))
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def pin_git_state(package: Path = _PACKAGE) -> dict:
    """Takes :func:`git_state` now and keeps it for this process. A command calls it as it
    starts: its code is what it imported then, so a record it writes hours later names that
    code, not a checkout changed (or committed) meanwhile."""
    package = Path(package).resolve()
    _PINNED.pop(package, None)
    _PINNED[package] = git_state(package)
    return dict(_PINNED[package])


def check_clean(records: Iterable[Mapping], allow_dirty: bool = False) -> None:
    """Raises ValueError when a record (a run record, ``machine.json``) says it was made from a
    git tree with uncommitted changes, unless ``allow_dirty``: a published number must name
    the code that made it. Records without the flag (made before it, or outside a checkout)
    pass."""
    dirty = [r for r in records if isinstance(r, Mapping) and r.get("git_dirty") is True]
    if dirty and not allow_dirty:
        commits = sorted({str(r.get("git_commit")) for r in dirty})
        raise ValueError(f"{len(dirty)} record(s) were made from a git tree with uncommitted "
                         f"changes (git_dirty, on commit {', '.join(commits)}): the commit does "
                         f"not name the code that made them. Commit and rerun, or pass "
                         f"--allow_dirty to publish them anyway")
