"""The bad-input suite, through the commands as a user runs them.

Every kind of damage to every data source, impossible label sizes, unknown or ill-typed config
keys and a workdir holding another config's results must each end with one line on stderr
naming the problem, exit status 2, and a workdir left byte for byte as it was. The commands run
in this process (``common.run`` with a patched ``sys.argv``, exactly what ``python -m`` calls),
so a case costs a fraction of a second; test_pipelines.py runs some as real subprocesses.

The matrix: for npz, idx, cifar (folder and tar.gz) and folder (tree and tar.gz): a missing
path, an empty file, a truncated gzip/tar/zip, a wrong magic number (a file of another format),
a wrong shape, labels out of range, mismatched image and label counts, and a non-image file in
a tree. Cells that cannot occur are left out: a folder tree's labels are its folder names (no
range, no count to mismatch), and an npz file is a zip (no gzip or tar to truncate; truncating
the zip is its case). tfds data sets are checked by tfds itself; what can go wrong before
that, an unprepared or unknown data set, is covered.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import importlib
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from absl import flags
from conftest import write_npz
from PIL import Image
from test_data import idx_bytes, targz, truncate, write_cifar, write_idx, write_tree

import configs.mnist
from pipelines import common
from scae import api
from scae import workdir as workdir_lib
from scae.data import sources as data
from scae.errors import InputError

SMOKE = "--config=configs/mnist.py:smoke"
SWEEP = "--config=configs/cifar10_sweep.py:random"
ROOT = Path(__file__).resolve().parents[1]


def command(capsys, module: str, *args: str) -> tuple[int, str]:
    """Runs ``python -m pipelines.<module> ARGS`` in this process; returns (status, stderr)."""
    main = importlib.import_module(f"pipelines.{module}").main
    # A fresh process starts with no parsed flags and without the config's override flags,
    # which config_flags defines while parsing; a second parse must not see the first's.
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    capsys.readouterr()
    with mock.patch.object(sys, "argv", [f"pipelines/{module}.py", *args]), \
            pytest.raises(SystemExit) as exit_info:
        common.run(main, needs_config=module not in ("visualize", "encode", "publish"),
                   needs_workdir=module != "publish")
    return exit_info.value.code, capsys.readouterr().err


def snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A workdir holding the smoke config and results, which no failed command may touch."""
    w = tmp_path / "work"
    (w / "pretrain").mkdir(parents=True)
    (w / "compare").mkdir()
    config = workdir_lib.config_dict(configs.mnist.get_config("smoke"))
    (w / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (w / "pretrain" / "metrics.jsonl").write_text('{"layer": 1, "epoch": 1}\n')
    (w / "compare" / "runs.jsonl").write_text('{"seed": 0, "test_error": 1.0}\n')
    return w


def assert_refused(capsys, workdir: Path, args: list[str], fragments: list[str],
                   module: str = "compare", config: str = SMOKE) -> None:
    """The command exits 2 with one ``error:`` line holding every fragment; ``workdir`` is
    unchanged."""
    before = snapshot(workdir)
    status, err = command(capsys, module, config, f"--workdir={workdir}", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(workdir) == before


# --- every data source, every kind of damage ------------------------------------------------
# Each builder makes a damaged data set under ``root`` and returns (source, fragments the
# error line must contain). The fragments name the file and say what is wrong with it.


def missing(kind: str, name: str):
    """The case of a ``kind:`` source whose path ``name`` does not exist."""
    def case(root):
        return f"{kind}:{root / name}", [str(root / name), "no such file"]
    case.__name__ = f"{kind}_missing"
    return case


def empty(kind: str, name: str):
    """The case of a ``kind:`` source that is an empty file ``name``."""
    def case(root):
        (root / name).write_bytes(b"")
        return f"{kind}:{root / name}", [str(root / name), "empty file"]
    case.__name__ = f"{kind}_empty"
    return case


def npz_good(root: Path) -> Path:
    return write_npz(root / "d.npz", num_train=300, num_test=50, shape=(28, 28))


def npz_truncated(root):
    return f"npz:{truncate(npz_good(root))}", [str(root / "d.npz"), "not a readable .npz"]


def npz_wrong_magic(root):
    (root / "t.npz").write_text("hello, not a zip")
    return f"npz:{root / 't.npz'}", [str(root / "t.npz"), "no zip signature"]


def npz_wrong_shape(root):
    path = write_npz(root / "s.npz", shape=(28,))
    return f"npz:{path}", [str(path), "train_images"]


def npz_label_range(root):
    names = np.array(list("0123456789"))
    path = write_npz(root / "r.npz", train_labels=np.full(60, 12), class_names=names)
    return f"npz:{path}", [str(path), "labels must lie in 0..9"]


def npz_count_mismatch(root):
    path = write_npz(root / "c.npz", train_labels=np.zeros(59, np.uint8))
    return f"npz:{path}", [str(path), "60 images but 59 labels"]


def idx_empty(root):
    write_idx(root / "m", compress=False)
    (root / "m" / "train-labels-idx1-ubyte").write_bytes(b"")
    return f"idx:{root / 'm'}", ["train-labels-idx1-ubyte", "empty file"]


def idx_truncated(root):
    write_idx(root / "m", compress=True)
    truncate(root / "m" / "train-images-idx3-ubyte.gz")
    return f"idx:{root / 'm'}", ["train-images-idx3-ubyte.gz", "gzip"]


def idx_wrong_magic(root):
    write_idx(root / "m", compress=False)
    path = root / "m" / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03
    path.write_bytes(bytes(raw))
    return f"idx:{root / 'm'}", [str(path), "magic number 2051"]


def idx_wrong_shape(root):
    write_idx(root / "m", compress=False)
    path = root / "m" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    return f"idx:{root / 'm'}", [str(path), "bytes"]


def idx_label_range(root):
    write_idx(root / "m", compress=False)
    (root / "m" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(12, 10), 2049))
    return f"idx:{root / 'm'}", ["idx:", "labels must lie in 0..9"]


def idx_count_mismatch(root):
    write_idx(root / "m", compress=True)
    raw = idx_bytes(np.zeros(5), 2049)
    (root / "m" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    return f"idx:{root / 'm'}", ["12 images", "5 labels"]


def cifar_truncated(root):
    write_cifar(root / "cifar-10-batches-py", n=40)
    archive = truncate(targz(root / "cifar-10-batches-py", root / "c.tar.gz"), 0.6)
    return f"cifar:{archive}", [str(archive), "truncated"]


def cifar_wrong_magic(root):
    (root / "x.tar.gz").write_text("not a tar")
    return f"cifar:{root / 'x.tar.gz'}", [str(root / "x.tar.gz"), "tar archive"]


def _cifar_with_batch(root, batch):
    write_cifar(root / "c")
    (root / "c" / "data_batch_1").write_bytes(pickle.dumps(batch))
    return f"cifar:{root / 'c'}"


def cifar_wrong_shape(root):
    batch = {b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}
    return _cifar_with_batch(root, batch), ["data_batch_1", "(3, 1024)"]


def cifar_label_range(root):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    return _cifar_with_batch(root, batch), ["cifar:", "labels must lie in 0..9"]


def cifar_count_mismatch(root):
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}
    return _cifar_with_batch(root, batch), ["data_batch_1", "3 images but 2 labels"]


def cifar_not_a_batch(root):
    write_cifar(root / "c")
    truncate(root / "c" / "data_batch_2")
    return f"cifar:{root / 'c'}", ["data_batch_2", "not a readable"]


def folder_truncated(root):
    write_tree(root / "t", per_class=20)
    archive = truncate(targz(root / "t", root / "t.tar.gz"), 0.5)
    return f"folder:{archive}", [str(archive), "truncated"]


def folder_wrong_magic(root):
    write_tree(root / "t")
    (root / "t" / "train" / "cat" / "0001.png").write_bytes(b"GIF89a but not really")
    return f"folder:{root / 't'}", ["0001.png", "unknown or corrupt format"]


def folder_wrong_shape(root):
    write_tree(root / "t")
    odd = root / "t" / "train" / "emu" / "9999.png"
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(odd)
    return f"folder:{root / 't'}", [str(odd), "expected 5x4 RGB"]


def folder_non_image(root):
    write_tree(root / "t")
    (root / "t" / "train" / "dog" / "notes.txt").write_text("not an image")
    archive = targz(root / "t", root / "t.tar.gz")
    return f"folder:{archive}", ["t.tar.gz:t/train/dog/notes.txt", "not a readable image"]


def folder_empty_split(root):
    (root / "e" / "train" / "a").mkdir(parents=True)
    return f"folder:{root / 'e'}", [str(root / "e"), "no images under"]


CASES = [missing("npz", "none.npz"), empty("npz", "e.npz"), npz_truncated, npz_wrong_magic,
         npz_wrong_shape, npz_label_range, npz_count_mismatch,
         missing("idx", "nowhere"), idx_empty, idx_truncated, idx_wrong_magic, idx_wrong_shape,
         idx_label_range, idx_count_mismatch,
         missing("cifar", "none.tar.gz"), empty("cifar", "e.tar.gz"), cifar_truncated,
         cifar_wrong_magic, cifar_wrong_shape, cifar_label_range, cifar_count_mismatch,
         cifar_not_a_batch,
         missing("folder", "none"), empty("folder", "e.tar.gz"), folder_truncated,
         folder_wrong_magic, folder_wrong_shape, folder_non_image, folder_empty_split]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("module", ["pretrain", "compare"])
def test_damaged_data(capsys, tmp_path, workdir, monkeypatch, case, module):
    monkeypatch.setenv("SCAE_CACHE_DIR", str(tmp_path / "cache"))
    source, fragments = case(tmp_path)
    assert_refused(capsys, workdir, [f"--config.data.source={source}"], fragments, module)


def test_tfds_not_prepared_or_unknown(capsys, tmp_path, workdir, monkeypatch):
    monkeypatch.setattr(data, "_can_prepare", lambda: False)
    empty = f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"
    assert_refused(capsys, workdir, ["--config.data.source=tfds:mnist", empty],
                   ["tfds:mnist", "not prepared"])
    assert_refused(capsys, workdir, ["--config.data.source=tfds:no_such_dataset_xyz", empty],
                   ["no tfds data set"])


# --- configs, label sizes and workdirs ------------------------------------------------------


@pytest.mark.parametrize("args,fragments", [
    (["--config.pretrain.bogus=1"], ["--config.pretrain.bogus: no such config key"]),
    (["--config.bogus=1"], ["--config.bogus: no such config key"]),
    (["--config.pretrain.batch_size=abc"], ["batch_size"]),
    (["--config.pretrain.learning_rate=fast"], ["learning_rate"]),
    (["--config.pretrain.batch_size=0"], ["config.pretrain.batch_size"]),
    (["--config.pretrain.learning_rate=-0.1"], ["config.pretrain.learning_rate"]),
    (["--config.finetune.momentum=1.5"], ["momentum"]),
    (["--config.pretrain.noise=mask", "--config.pretrain.noise_level=1.0"], ["noise_level"]),
    (["--config.pretrain.decoder=magic"], ["config.pretrain.decoder"]),
    (["--config.compare.seed_batching=pmap"], ["config.compare.seed_batching", "vmap"]),
    (["--config.compare.arms=(random,magic)"], ["config.compare.arms"]),
    (["--config.model.features=(8,8)"], ["config.model.kernel_sizes"]),
    (["--config.pretrain.layers=5"], ["config.pretrain.layers"]),
    (["--config.finetune.divergence_retries=-1"], ["config.finetune.divergence_retries"]),
    (["--config.data.validation_size=70000"], ["config.data.validation_size"]),
    # Empty tuples pass every per-item check: compare would pretrain, train nothing and
    # report "No finished runs yet"; a CNN of no conv layers has no top layer to classify.
    (["--config.compare.label_sizes=()"],
     ["config.compare.label_sizes: expected at least one size"]),
    (["--config.model.features=()"], ["config.model.features: expected at least one conv layer"]),
    # A value given twice would train or report the same runs twice (n doubled).
    (["--config.compare.arms=('random','random')"], ["config.compare.arms: 'random' given twice"]),
    (["--config.compare.label_sizes=(100,100)"], ["config.compare.label_sizes: 100 given twice"]),
    (["--config.pretrain.noise_level=0.5"], ["config.pretrain.noise_level: 0.5",
                                              "pretrain.noise='none' would do nothing"]),
])
def test_bad_config(capsys, workdir, args, fragments):
    assert_refused(capsys, workdir, args, fragments)


@pytest.mark.parametrize("module", ["pretrain", "sweep"])
def test_no_label_sizes_is_refused_by_every_command_and_the_api(capsys, workdir, module):
    # Validation is the config's, not one command's: the API refuses it too.
    with pytest.raises(InputError, match="config.compare.label_sizes: expected at least one"):
        api.make_config("mnist", "smoke", compare__label_sizes=())
    config = SWEEP if module == "sweep" else SMOKE  # the sweep needs a sweep section
    before = snapshot(workdir)
    status, err = command(capsys, module, config, f"--workdir={workdir}",
                          "--config.compare.label_sizes=()")
    assert status == 2, err[-2000:]
    assert err.strip() == "error: config.compare.label_sizes: expected at least one size, got ()"
    assert snapshot(workdir) == before


def test_cifar10_by_name_without_a_prepared_copy(capsys, workdir, monkeypatch):
    # Whether this machine's tfds has cifar10 must not decide the outcome.
    monkeypatch.setattr(data, "_tfds_state", lambda name, data_dir: "absent")
    assert_refused(capsys, workdir, ["--config.data.source=cifar10"],
                   ["'cifar10'", "tfds has no prepared copy", "folder:", "cifar:"])


def test_a_divergence_is_exit_3_naming_where(capsys, tmp_path):
    w = tmp_path / "w"
    status, err = command(capsys, "pretrain", SMOKE, f"--workdir={w}",
                          "--config.pretrain.optimizer=sgd", "--config.pretrain.learning_rate=1e30",
                          "--config.model.activation=relu", "--config.pretrain.layers=1")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert status == 3, err[-2000:]
    assert len(lines) == 1 and "layer 1" in lines[0] and "non-finite" in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_label_size_above_the_labelled_images(capsys, tmp_path, workdir):
    # 300 training images, 200 of them validation: 100 left to label, 10 of each class.
    source = f"--config.data.source=npz:{npz_good(tmp_path)}"
    assert_refused(capsys, workdir, [source, "--config.data.pretrain_size=0",
                                     "--config.compare.label_sizes=(50,101)"],
                   ["config.compare.label_sizes", "101 labels asked", "only 100"])
    assert_refused(capsys, workdir, ["--config.compare.label_sizes=(100000,)"],
                   ["config.compare.label_sizes", "100000"])


def test_workdir_of_a_different_config(capsys, workdir):
    assert_refused(capsys, workdir, ["--config.model.features=(16,8,8)"],
                   ["holds results of a different config", "model.features", "--overwrite"])
    assert_refused(capsys, workdir, ["--config.finetune.learning_rate=0.5"],
                   ["finetune.learning_rate"])
    # pretrain only depends on the sections before finetune, but it refuses a changed stack.
    assert_refused(capsys, workdir, ["--config.pretrain.learning_rate=0.5"],
                   ["pretrain.learning_rate"], module="pretrain")


def test_unreadable_workdir_config(capsys, workdir):
    (workdir / "config.json").write_text("{ not json")
    assert_refused(capsys, workdir, [], ["config.json", "unreadable", "--overwrite"])


def test_missing_flags(capsys, tmp_path):
    status, err = command(capsys, "compare", SMOKE)
    assert status == 2 and err.strip() == "error: --workdir: required"
    status, err = command(capsys, "compare", f"--workdir={tmp_path / 'w'}")
    assert status == 2 and err.strip().startswith("error: --config: required")
    status, err = command(capsys, "compare", SMOKE, f"--workdir={tmp_path / 'w'}", "extra")
    assert status == 2 and err.strip() == "error: unexpected arguments: extra"
    assert not (tmp_path / "w").exists()


@contextlib.contextmanager
def lock_held_elsewhere(workdir: Path):
    """Another process holding ``workdir``'s lock while the block runs; it is then killed
    (SIGKILL: the lock goes with the process)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from scae import workdir; workdir.lock(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(600)", str(workdir)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_workdir_in_use_by_a_running_command(capsys, workdir):
    with lock_held_elsewhere(workdir) as holder:
        assert_refused(capsys, workdir, [], ["in use by a running command",
                                             f"pid {holder.pid}"])
    workdir_lib.lock(workdir)
    workdir_lib.lock(workdir)  # a process may take its own lock again


def test_an_unusable_compilation_cache_only_costs_speed(capsys, tmp_path, monkeypatch):
    import jax

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(blocker / "xla"))
    before = jax.config.jax_enable_compilation_cache
    try:
        assert common.enable_compilation_cache() is None
        assert "compilation cache off" in capsys.readouterr().err
        assert not jax.config.jax_enable_compilation_cache
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


# --- impossible values, refused before any work ----------------------------------------------


@pytest.mark.parametrize("args,fragments", [
    (["--config.finetune.learning_rate=nan"], ["config.finetune.learning_rate", "finite"]),
    (["--config.pretrain.noise_level=inf"], ["config.pretrain.noise_level", "finite"]),
    (["--config.seed=4294967296"], ["config.seed", "32 bits"]),
    (["--config.pretrain.layers=0"], ["config.pretrain.layers", "compare fine-tunes"]),
    (["--config.data.validation_size=0"], ["config.data.validation_size", "best epoch"]),
])
def test_impossible_values(capsys, workdir, args, fragments):
    assert_refused(capsys, workdir, args, fragments)


def test_pretrain_needs_validation_images_only_when_it_trains(capsys, workdir):
    assert_refused(capsys, workdir, ["--config.data.validation_size=0"],
                   ["config.data.validation_size", "reconstruction"], module="pretrain")


@pytest.mark.parametrize("body,fragments", [
    ("def get_config(arg=None):\n    raise RuntimeError('boom')\n",
     ["get_config failed", "RuntimeError: boom"]),
    ("def get_config(arg=None):\n    return {'seed': 0}\n", ["returned a dict", "ConfigDict"]),
    ("def get_config(arg=None):\n    return 42\n", ["returned a int"]),
    ("import ml_collections\ndef get_config(arg=None):\n"
     "    return ml_collections.ConfigDict({'seed': 0})\n", ["not a config for this project"]),
])
def test_config_files_that_do_not_give_a_config(capsys, tmp_path, body, fragments):
    path = tmp_path / "cfg.py"
    path.write_text(body)
    w = tmp_path / "w"
    status, err = command(capsys, "pretrain", f"--config={path}", f"--workdir={w}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert all(f in lines[0] for f in fragments), lines[0]
    assert not w.exists()


def test_an_override_below_a_value_is_refused(capsys, workdir):
    assert_refused(capsys, workdir, ["--config.model.features.x=1"],
                   ["--config.model.features.x"])


# --- workdirs that cannot be used ------------------------------------------------------------


@pytest.mark.parametrize("case", ["file", "under_a_file", "compare_is_a_file"])
def test_unusable_workdir(capsys, tmp_path, case):
    if case == "file":
        w = tmp_path / "w"
        w.write_text("not a folder")
        fragment = "is a file"
    elif case == "under_a_file":
        (tmp_path / "f").write_text("x")
        w = tmp_path / "f" / "w"
        fragment = "lies under"
    else:
        w = tmp_path / "w"
        w.mkdir()
        (w / "compare").write_text("x")
        fragment = "compare: is a file"
    before = snapshot(tmp_path)
    status, err = command(capsys, "compare", SMOKE, f"--workdir={w}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and fragment in lines[0], err[-2000:]
    assert snapshot(tmp_path) == before and not (tmp_path / "w" / ".lock").exists()


# --- exit statuses of faults: 74 (a write failed), 130 / 143 (signals) -----------------------


def test_a_full_disk_is_exit_74_naming_the_file(capsys, workdir, monkeypatch):
    import errno

    from scae import atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = snapshot(workdir)
    monkeypatch.setattr(atomic.os, "fsync", full)
    status, err = command(capsys, "pretrain", SMOKE, f"--workdir={workdir}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 74, err[-2000:]
    assert len(lines) == 1 and "no space left on device" in lines[0], err[-2000:]
    assert str(workdir / "pretrain" / "settings.json") in lines[0]
    after = {k: v for k, v in snapshot(workdir).items() if k != ".lock"}  # the lock was taken
    assert after == before  # earlier results intact, no temporary file left


def _signalling_main(signum, swallow):
    def main(config, workdir):
        try:
            os.kill(os.getpid(), signum)
            for _ in range(100):  # the handler runs at the next bytecode
                pass
        except BaseException:  # noqa: BLE001 - a library that swallows it, as orbax's threads do
            if not swallow:
                raise
    return main


@pytest.mark.parametrize("signum,status", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
@pytest.mark.parametrize("swallow", [False, True])
def test_signals_end_with_their_exit_status(capsys, tmp_path, monkeypatch, signum, status,
                                           swallow):
    import signal

    from scae import interrupt

    monkeypatch.setattr(interrupt, "GRACE_S", 600.0)  # no watchdog exit of the test process

    main = _signalling_main(getattr(signal, signum), swallow)
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["pipelines/pretrain.py", SMOKE,
                                         f"--workdir={tmp_path}"]), \
            pytest.raises(SystemExit) as exit_info:
        common.run(main)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == status, err
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at "), err
    assert f"({signum})" in lines[0] and "rerun" in lines[0]


# --- data the model cannot take ---------------------------------------------------------------
@pytest.mark.parametrize("module", ["pretrain", "compare"])
@pytest.mark.parametrize("kind", ["too_small", "classes", "channels"])
def test_data_the_model_cannot_take(capsys, tmp_path, workdir, module, kind):
    if kind == "too_small":
        path = write_npz(tmp_path / "s.npz", num_train=500, num_test=20, shape=(6, 6))
        fragments = ["kernel", "6x6"]
    elif kind == "classes":
        path = write_npz(tmp_path / "c.npz", num_train=500, num_test=20, shape=(28, 28),
                         num_classes=12)
        fragments = ["config.model.num_classes", "12 classes"]
    else:
        path = write_npz(tmp_path / "h.npz", num_train=500, num_test=20, shape=(28, 28, 2))
        fragments = ["2 channels", "1 (grayscale) and 3 (RGB)"]
    assert_refused(capsys, workdir, [f"--config.data.source=npz:{path}"], fragments, module)


# --- damaged files in a workdir ---------------------------------------------------------------


@pytest.fixture
def stack_workdir(tmp_path: Path) -> Path:
    """A pretrain workdir of the smoke config with a checkpoint of layer 1 (its content does
    not matter to these tests: they fail before it is used)."""
    from scae import workdir as workdir_lib
    from scae.train import checkpoint

    config = configs.mnist.get_config("smoke")
    w = tmp_path / "stack"
    workdir_lib.guard(config, w, "pretrain", overwrite=False)
    c = checkpoint.Checkpoints(w / "pretrain" / "ckpt" / "layer1")
    c.save(8, {"params": {"w": np.zeros((5, 5, 1, 8), np.float32)}}, {"layer_records": []})
    c.close()
    workdir_lib._LOCKS.pop(str(w.resolve())).close()  # as if that command had ended
    return w


def test_a_damaged_checkpoint_is_refused_by_the_command(capsys, stack_workdir):
    manifest = stack_workdir / "pretrain" / "ckpt" / "layer1" / "8" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:10])
    before = snapshot(stack_workdir)
    status, err = command(capsys, "visualize", f"--workdir={stack_workdir}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err[-3000:]
    assert str(stack_workdir / "pretrain" / "ckpt" / "layer1") in lines[0]
    assert "damaged checkpoint" in lines[0] and "--overwrite" in lines[0]
    assert {k: v for k, v in snapshot(stack_workdir).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_visualize_takes_the_lock(capsys, stack_workdir):
    with lock_held_elsewhere(stack_workdir):
        status, err = command(capsys, "visualize", f"--workdir={stack_workdir}")
        assert status == 2 and "in use by a running command" in err, err[-2000:]
    status, err = command(capsys, "visualize", f"--workdir={stack_workdir / 'absent'}")
    assert status == 2 and "not found" in err and not (stack_workdir / "absent").exists()


# --- the data a workdir was made from --------------------------------------------------------


def test_other_images_at_the_same_path_are_refused(capsys, tmp_path):
    """Replacing the npz a workdir was made from with other images at the same path used to go
    unnoticed (the stack and runs reused, exit 0)."""
    path = npz_good(tmp_path)
    w = tmp_path / "w"
    args = [SMOKE, f"--workdir={w}", f"--config.data.source=npz:{path}",
            "--config.data.validation_size=60", "--config.data.pretrain_size=0",
            "--config.pretrain.layers=1"]
    status, err = command(capsys, "pretrain", *args)
    assert not status, err[-2000:]
    other = np.load(path)
    write_npz(path, num_train=300, num_test=50, shape=(28, 28),
              train_images=255 - other["train_images"])
    before = snapshot(w)
    status, err = command(capsys, "pretrain", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err[-2000:]
    assert "other data" in lines[0] and str(path) in lines[0] and str(w) in lines[0], lines[0]
    assert snapshot(w) == before


# --- files written outside the workdir ---------------------------------------------------------


@pytest.mark.parametrize("case", ["a_folder", "under_a_file", "in_a_read_only_folder"])
def test_an_encode_output_that_cannot_be_written_is_refused_first(capsys, tmp_path,
                                                                  stack_workdir, monkeypatch,
                                                                  case):
    """Each used to end in a traceback and exit 1 after the encoding."""
    if case == "a_folder":
        out, fragment = tmp_path / "feats", "is a folder; expected a file name"
        out.mkdir()
    elif case == "under_a_file":
        (tmp_path / "f").write_text("x")
        out, fragment = tmp_path / "f" / "feats.npz", "which is a file"
    else:
        out, fragment = tmp_path / "ro" / "feats.npz", "read-only file system"
        out.parent.mkdir()

        def read_only(*args, **kwargs):  # root writes anywhere: the refusal is injected
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        from scae import workdir as workdir_lib
        monkeypatch.setattr(workdir_lib.tempfile, "TemporaryFile", read_only)
    before = snapshot(tmp_path)
    status, err = command(capsys, "encode", f"--workdir={stack_workdir}", f"--output={out}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: --output ") and fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_visualize_sweeps_what_a_killed_visualize_left(capsys, stack_workdir):
    left = [stack_workdir / "figures" / ".loss.png.k3j2.tmp",
            stack_workdir / "figures" / ".trash-old-1234abcd"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    command(capsys, "visualize", f"--workdir={stack_workdir}")  # the damaged stack: refused
    assert not any(p.exists() for p in left)


def test_encode_sweeps_what_a_killed_encode_of_its_output_left(capsys, tmp_path, stack_workdir):
    out = tmp_path / "feats.npz"
    left, kept = tmp_path / ".feats.npz.k3j2.tmp", tmp_path / ".other.npz.k3j2.tmp"
    left.write_text("x")
    kept.write_text("x")
    command(capsys, "encode", f"--workdir={stack_workdir}", f"--output={out}")
    assert not left.exists() and kept.exists()  # only its own output's, never a neighbour's


# --- compare's own exit statuses ----------------------------------------------------------------


def test_compare_diverging_in_fine_tuning_is_exit_3_naming_the_run(capsys, tmp_path):
    w = tmp_path / "w"
    status, err = command(capsys, "compare", SMOKE, f"--workdir={w}",
                          "--config.pretrain.layers=1", "--config.compare.label_sizes=(50,)",
                          "--config.compare.arms=('random',)", "--config.compare.num_seeds=1",
                          "--config.finetune.optimizer=sgd",
                          "--config.finetune.learning_rate=1e30",
                          "--config.model.activation=relu")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert status == 3, err[-2000:]
    assert len(lines) == 1 and "random run at 50 labels" in lines[0] and \
        "non-finite" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert (w / "pretrain" / "metrics.jsonl").exists()  # the stack it made is kept


def test_compare_on_a_full_disk_is_exit_74_naming_the_file(capsys, workdir, monkeypatch):
    from scae import atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = snapshot(workdir)
    monkeypatch.setattr(atomic.os, "fsync", full)
    status, err = command(capsys, "compare", SMOKE, f"--workdir={workdir}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 74, err[-2000:]
    assert len(lines) == 1 and "no space left on device" in lines[0], err[-2000:]
    assert "settings.json" in lines[0] and str(workdir) in lines[0]
    assert {k: v for k, v in snapshot(workdir).items() if k != ".lock"} == before


# --- the sweep: the data checked against the config before the workdir changes ---------------


def sweep_workdir(root: Path, records: bool) -> Path:
    """A sweep's workdir with its report and a config.json (and, with ``records``, its
    records), which no refused sweep may touch."""
    w = root / "sweep"
    w.mkdir()
    if records:
        (w / "sweep.jsonl").write_text('{"point_id": "finetune.learning_rate=0.01"}\n')
    (w / "sweep.md").write_text("# Recipe sweep\n")
    (w / "config.json").write_text('{"planted": true}\n')
    return w


def assert_sweep_refused(capsys, w: Path, args: list[str], fragments: list[str]) -> None:
    assert_refused(capsys, w, args, fragments, "sweep", SWEEP)


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("data_args, sweep_args, fragments", [
    # A pool of 600 - 50 = 550 for 100,000 labels.
    (dict(), ["--config.sweep.label_size=100000", "--config.data.validation_size=50"],
     ["config.sweep.label_size: 100000 labels asked for, the pool has 550"]),
    # 200 classes for the 10 of the model (all of them in the validation split and the pool),
    # which trained would diverge rather than be refused.
    (dict(num_classes=200), ["--config.sweep.label_size=100", "--config.data.validation_size=200"],
     ["config.model.num_classes: the data set has 200 classes", "model outputs 10"]),
    (dict(shape=(12, 12, 3)), ["--config.sweep.label_size=100",
                               "--config.data.validation_size=50"],
     ["config.model.kernel_sizes", "12x12"]),
])
def test_sweep_refuses_data_that_do_not_fit_before_touching_the_workdir(
        capsys, tmp_path, overwrite, data_args, sweep_args, fragments):
    source = write_npz(tmp_path / "d.npz", num_train=600, num_test=20,
                       **{"shape": (32, 32, 3), **data_args})
    # With --overwrite the records would be deleted; without, records of another base would
    # be refused before the data load, so the workdir holds the rest.
    w = sweep_workdir(tmp_path, records=overwrite)
    assert_sweep_refused(capsys, w, [f"--config.data.source=npz:{source}", *sweep_args,
                                     *(["--overwrite"] if overwrite else [])], fragments)


def test_sweep_overwrite_refuses_a_workdir_in_use_before_deleting_it(capsys, tmp_path):
    source = write_npz(tmp_path / "d.npz", num_train=600, num_test=20, shape=(32, 32, 3))
    w = sweep_workdir(tmp_path, records=True)
    # Another sweep holds the workdir (here another thread of this process).
    holder = threading.Thread(target=workdir_lib.lock, args=(w,))
    holder.start()
    holder.join()
    try:
        assert_sweep_refused(capsys, w, [f"--config.data.source=npz:{source}",
                                         "--config.sweep.label_size=100",
                                         "--config.data.validation_size=50", "--overwrite"],
                             [str(w), "in use"])
    finally:
        workdir_lib.release(w)


@pytest.mark.parametrize("module", ["pretrain", "compare", "filters"])
def test_a_batch_the_devices_cannot_split_is_refused_before_the_workdir_is_made(
        capsys, tmp_path, monkeypatch, module):
    """Pretraining splits its batch over the devices: on a machine whose device count does
    not divide it, the command stops with one line before it writes anything."""
    from scae.train import parallel

    monkeypatch.setattr(parallel, "num_devices", lambda: 3)
    w = tmp_path / "w"
    config = "--config=configs/filters_mnist.py:smoke" if module == "filters" else SMOKE
    status, err = command(capsys, module, config, f"--workdir={w}")
    assert status == 2, err[-2000:]
    assert "does not split over 3 devices" in err and "pretrain.batch_size" in err, err[-2000:]
    assert not w.exists()


@pytest.mark.parametrize("module", ["compare", "sweep"])
def test_a_data_set_of_one_class_is_refused_for_fine_tuning(capsys, tmp_path, module):
    """A comparison (or sweep) of classifiers trained on one class shows nothing: refused with
    one line before anything is written; pretraining alone may use such images."""
    path = write_npz(tmp_path / "one.npz", num_train=300, num_test=20, shape=(28, 28),
                     num_classes=1)
    w = tmp_path / "w"
    config = SWEEP if module == "sweep" else SMOKE
    status, err = command(capsys, module, config, f"--workdir={w}",
                          f"--config.data.source=npz:{path}", "--config.data.validation_size=50",
                          "--config.data.pretrain_size=0")
    assert status == 2, err[-2000:]
    assert "every training image has label 0" in err and "at least 2 classes" in err, err[-2000:]
    assert not w.exists()
