"""The commands end to end as subprocesses: outputs, resume after kills, determinism, and a
few bad inputs (the whole bad-input matrix runs in-process in test_bad_input.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import configs.mnist
from scae import atomic
from scae.models import modules as models
from scae.study import pretrain as pretraining

ROOT = Path(__file__).resolve().parents[1]


# The CPU unless SCAE_TEST_PLATFORMS says otherwise (e.g. cuda, to check GPU determinism).
PLATFORMS = os.environ.get("SCAE_TEST_PLATFORMS", "cpu")


def command_env(**extra: str) -> dict[str, str]:
    """The environment the commands run in: this checkout, on PLATFORMS."""
    return dict(os.environ, JAX_PLATFORMS=PLATFORMS, PYTHONPATH=str(ROOT), **extra)


def run(module: str, *args: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    env = command_env(**env)
    return subprocess.run([sys.executable, "-m", f"pipelines.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


def assert_clean_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def smoke_compare(tmp_path_factory) -> Path:
    """An uninterrupted smoke compare: the reference for the kill tests. It compiles every
    program itself (no compilation cache), so that the runs compared with it, which take their
    programs from the session's cache, ran other compilations of them."""
    w = tmp_path_factory.mktemp("smoke") / "w"
    start = time.monotonic()
    proc = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}",
               SCAE_COMPILATION_CACHE="0")
    (w.parent / "outside_wall_time_s").write_text(str(time.monotonic() - start))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| where the wall time went | s | share |" in proc.stderr
    return w


@pytest.mark.slow
def test_machine_json_accounts_for_the_whole_wall_time(smoke_compare):
    """machine.json's breakdown: parts that add up to the session's wall time (within 2%),
    which the process's own clock agrees with from outside."""
    m = json.loads((smoke_compare / "machine.json").read_text())
    parts, total = m["time_breakdown_s"], m["time_breakdown_total_s"]
    assert abs(sum(parts.values()) - total) <= 0.02 * total, (parts, total)
    assert all(v >= 0 for v in parts.values()), parts
    for name in ("start-up and imports", "data loading and preprocessing", "compilation",
                 "training steps", "evaluation", "checkpoints", "figures and tables", "other"):
        assert name in parts, name
    assert parts["training steps"] > 0 and parts["compilation"] > 0
    outside = float((smoke_compare.parent / "outside_wall_time_s").read_text())
    assert total <= outside + 0.5 and total >= 0.9 * m["wall_time_s"], (total, outside)


@pytest.mark.slow
def test_smoke_compare_writes_every_output_and_resumes(smoke_compare):
    w = smoke_compare
    for name in ["config.json", "pretrain/metrics.jsonl", "pretrain/loss.png",
                 "pretrain/filters_layer1.png", "pretrain/filters_layer3.png",
                 "pretrain/reconstructions_layer2.png", "compare/runs.csv", "compare/summary.csv",
                 "compare/summary.md", "compare/error_vs_labels.png", "compare/curves.png",
                 "compare/filters_conv1.png", "compare/embedding.png"]:
        assert (w / name).is_file() and (w / name).stat().st_size > 0, name
    for k in (1, 2, 3):
        assert (w / "pretrain" / "ckpt" / f"layer{k}").is_dir()
    rows = list(csv.DictReader(open(w / "compare" / "runs.csv")))
    assert len(rows) == 2 * 3  # seeds x arms at one label size
    assert {r["arm"] for r in rows} == {"random", "pretrained", "frozen"}
    assert "| pretrained − random | 2 |" in (w / "compare" / "summary.md").read_text()

    before = (w / "compare" / "runs.jsonl").read_text()
    again = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stderr
    assert "test error" not in again.stderr  # no run was redone
    assert (w / "compare" / "runs.jsonl").read_text() == before

    vis = run("visualize", f"--workdir={w}")
    assert vis.returncode == 0, vis.stderr[-3000:]
    for name in ("filters_conv1_compared", "filters_layer2", "loss", "error_vs_labels",
                 "curves", "filters_conv1", "embedding"):  # redrawn from the records
        assert (w / "figures" / f"{name}.png").stat().st_size > 0, name


@pytest.mark.heavy
@pytest.mark.slow
def test_two_processes_give_identical_parameters_and_metrics(smoke_compare, tmp_path):
    """On the CPU the same config and seed reproduce every bit in a fresh process, from other
    compilations of the same programs (the reference compiled its own, without the cache)."""
    w = tmp_path / "w"
    again = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    _same_stack(smoke_compare, w, exact=True)
    for name in ("pretrain/metrics.jsonl", "compare/runs.jsonl"):
        timing = ("time_s", "cell_time_s", "img_per_s")
        strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
        assert strip(atomic.read_jsonl(w / name)) == \
            strip(atomic.read_jsonl(smoke_compare / name)), name
    for arm in ("pretrained", "random"):  # the fine-tuned first-layer filters
        name = f"compare/conv1_{arm}_100.npy"
        np.testing.assert_array_equal(np.load(w / name), np.load(smoke_compare / name))
    assert (w / "compare" / "summary.md").read_text() == \
        (smoke_compare / "compare" / "summary.md").read_text()


def interrupt(module: str, workdir: Path, *, marker: str | None = None,
              at: tuple[str, str] | None = None) -> str:
    """Starts the smoke command and SIGKILLs it: as soon as ``marker`` appears on stderr, or,
    with ``at=(EVENT, REGEX)``, exactly at the first file-system event EVENT on a path matching
    REGEX (see kill_at.py). Returns what it wrote on stderr."""
    env = command_env(PYTHONUNBUFFERED="1")
    args = ["--config=configs/mnist.py:smoke", f"--workdir={workdir}"]
    command = ([sys.executable, str(ROOT / "tests" / "kill_at.py"), *at, "1",
                f"pipelines.{module}", *args] if at else
               [sys.executable, "-m", f"pipelines.{module}", *args])
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen, hit = [], threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read(64), ""):
            seen.append(chunk)
            if marker and marker in "".join(seen[-40:]):
                hit.set()
                return
        hit.set()

    threading.Thread(target=read, daemon=True).start()
    if not hit.wait(timeout=600):
        proc.kill()
    if marker:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = "".join(seen)
    if proc.returncode != -signal.SIGKILL or (at and "killed at" not in text):
        pytest.fail(f"not killed at {marker or at} (exit {proc.returncode}):\n{text[-2000:]}")
    return text


def finished_work(workdir: Path, reference: Path) -> tuple[set[int], set[str]]:
    """The CAE layers whose last checkpoint is in ``workdir``, and the arms whose runs are
    recorded there (the smoke preset has one label size)."""
    total = {r["layer"]: r["step"] for r in atomic.read_jsonl(reference / "pretrain" /
                                                                "metrics.jsonl")}
    layers = {k for k, steps in total.items()
              if str(steps) in {p.name for p in (workdir / "pretrain" / "ckpt" /
                                                   f"layer{k}").glob("*")}}
    arms = {r["arm"] for r in atomic.read_jsonl(workdir / "compare" / "runs.jsonl")}
    return layers, arms


def assert_nothing_redone(log: str, layers: set[int], arms: set[str]) -> None:
    for k in layers:
        assert f"layer {k}: finished earlier" in log and f"layer {k} epoch" not in log, log[-3000:]
    for arm in arms:
        assert f"{arm} 100 labels x2 seeds" not in log, log[-3000:]  # its progress bar


def _same_stack(a: Path, b: Path, exact: bool = False) -> None:
    config = configs.mnist.get_config("smoke")
    layers = lambda w: models.params_of(pretraining.from_workdir(w, config, 1))["layers"].values()
    for pa, pb in zip(layers(a), layers(b)):
        for name in pa:
            if exact:
                np.testing.assert_array_equal(pa[name], pb[name])
            else:
                np.testing.assert_allclose(pa[name], pb[name], rtol=1e-5, atol=1e-6)


RUN_KEYS = ("label_size", "arm", "seed", "best_epoch", "val_error", "test_error", "subset",
            "curve")

# Where the kill test stops the commands, in order. Markers on stderr hit the training loops;
# file-system events hit the writes themselves: inside an orbax checkpoint being written
# (its data complete, its commit marker not), a complete checkpoint not yet renamed into
# place, and complete temporary results files not yet renamed over the old ones.
KILLS = [
    ("pretrain", None, ("open", r"layer1/\d+\.orbax-checkpoint-tmp/state\.orbax-checkpoint-tmp/"
                                r"commit_success")),
    ("pretrain", "layer 2: CAE", None),  # between layers
    ("pretrain", None, ("os.rename", r"/pretrain/\.metrics\.jsonl\..*\.tmp$")),
    ("pretrain", "layer 3:  50%", None),  # mid-layer, after its periodic checkpoint
    ("compare", None, ("os.rename", r"/compare/ckpt/.*/\d+\.orbax-checkpoint-tmp$")),
    ("compare", "random at 100 labels, seeds", None),  # during fine-tuning, a cell recorded
    ("compare", None, ("os.rename", r"/compare/\.runs\.jsonl\..*\.tmp$")),
    ("compare", None, ("os.rename", r"/compare/\.summary\.md\..*\.tmp$")),
]


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_matches_the_uninterrupted_run(smoke_compare, tmp_path):
    w = tmp_path / "w"
    done, logs = (set(), set()), []
    for module, marker, at in KILLS:
        logs.append(interrupt(module, w, marker=marker, at=at))
        assert_nothing_redone(logs[-1], *done)
        assert "Traceback" not in logs[-1].split("killed at")[0], logs[-1][-3000:]
        done = finished_work(w, smoke_compare)
    # The checkpoint killed mid-write was not loaded: layer 1 started again from step 0.
    assert "layer 1: resuming" not in logs[1] and "layer 1 epoch 1" in logs[1], logs[1][-3000:]
    assert done == ({1, 2, 3}, {"random", "pretrained"})
    again = run("compare", "--config=configs/mnist.py:smoke", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_nothing_redone(again.stderr, *done)
    _same_stack(smoke_compare, w)
    ref = atomic.read_jsonl(smoke_compare / "compare" / "runs.jsonl")
    got = atomic.read_jsonl(w / "compare" / "runs.jsonl")
    assert [[r[k] for k in RUN_KEYS] for r in ref] == [[r[k] for k in RUN_KEYS] for r in got]
    assert (w / "compare" / "summary.md").read_text() == \
        (smoke_compare / "compare" / "summary.md").read_text()
    # Every output of a finished cell is there: each is written before the record that
    # says the cell is done, so no kill can leave a done cell without its filters.
    for arm in ("pretrained", "random"):
        np.testing.assert_array_equal(np.load(w / "compare" / f"conv1_{arm}_100.npy"),
                                      np.load(smoke_compare / "compare" / f"conv1_{arm}_100.npy"))
    # The per-epoch records survive too: the same layers, epochs, steps and settings, and the
    # same losses to float32 tolerance (a resumed layer replays its steps); times differ.
    timing = ("time_s", "cell_time_s", "img_per_s")
    records = lambda d: atomic.read_jsonl(d / "pretrain" / "metrics.jsonl")
    assert len(records(w)) == len(records(smoke_compare)) > 0
    for r, q in zip(records(smoke_compare), records(w)):
        assert {k: v for k, v in r.items() if k not in timing + ("train_mse", "val_mse")} == \
            {k: v for k, v in q.items() if k not in timing + ("train_mse", "val_mse")}
        np.testing.assert_allclose([r["train_mse"], r["val_mse"]],
                                   [q["train_mse"], q["val_mse"]], rtol=1e-5)
    # Nothing half-written is left behind.
    debris = [p for p in w.rglob("*") if p.name.endswith(".tmp") or "-tmp" in p.name]
    assert not debris, debris


@pytest.mark.slow
def test_filter_experiment_trains_every_variant_and_resumes(tmp_path):
    w = tmp_path / "f"
    args = ("--config=configs/filters_mnist.py:smoke", f"--workdir={w}")
    first = run("filters", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (w / "filters.png").read_bytes()[:4] == b"\x89PNG"
    for variant in ("plain", "noise", "pool", "noise_pool"):
        assert (w / variant / "pretrain" / "metrics.jsonl").is_file(), variant
    again = run("filters", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("layer 1: finished earlier") == 4
    assert "layer 1 epoch" not in again.stderr


def test_bad_config_file_and_preset(tmp_path):
    assert_clean_failure(run("pretrain", "--config=configs/nope.py", f"--workdir={tmp_path}"),
                         "nope.py")
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:huge",
                             f"--workdir={tmp_path}"), "huge")
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:smoke"), "--workdir")
    assert not any(tmp_path.iterdir())


def test_corrupt_data_file_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    w = tmp_path / "w"
    assert_clean_failure(run("pretrain", "--config=configs/mnist.py:smoke",
                             f"--config.data.source=npz:{bad}", f"--workdir={w}"), str(bad))
    assert not w.exists()


def test_benchmark_prints_one_json_line():
    proc = run("benchmark", "--workload=cae", "--layer=3", "--batch=8", "--steps=2",
               "--repeats=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("workload", "layer", "arch", "batch", "img_per_s", "gflop_per_s"):
        assert key in out
    assert out["layer"] == 3 and out["img_per_s"] > 0
    assert_clean_failure(run("benchmark", "--workload=gan"), "workload")


def test_overwrite_replaces_the_results_of_a_different_config(tmp_path):
    w = tmp_path / "w"
    first = run("pretrain", "--config=configs/mnist.py:smoke", "--config.pretrain.layers=0",
                f"--workdir={w}")
    assert first.returncode == 0, first.stderr[-2000:]
    (w / "compare").mkdir()
    (w / "compare" / "runs.jsonl").write_text("{}\n")
    args = ("--config=configs/mnist.py:smoke", "--config.pretrain.layers=0",
            "--config.pretrain.learning_rate=0.002", f"--workdir={w}")
    assert_clean_failure(run("pretrain", *args), "pretrain.learning_rate")
    assert (w / "compare" / "runs.jsonl").exists()
    again = run("pretrain", *args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (w / "compare").exists()
    assert json.loads((w / "config.json").read_text())["pretrain"]["learning_rate"] == 0.002


# --- encode and visualize read other data as the stack was trained -----------------------------


def _pretrain_small(tmp_path: Path, config: str, source: Path, *overrides: str) -> Path:
    """A one-layer stack of ``config`` pretrained by the command on ``source``; returns its
    workdir."""
    w = tmp_path / "w"
    proc = run("pretrain", config, f"--config.data.source=npz:{source}", f"--workdir={w}",
               "--config.data.pretrain_size=0", "--config.pretrain.layers=1", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


def test_encode_puts_another_source_through_the_stacks_own_transform_whole(tmp_path):
    """--source used to refit the standardisation on the other source's training images (the
    same test images gave features up to 2.16 apart) and to take the workdir's validation and
    test sizes (a smaller file refused with config.data.validation_size, a larger test split
    cut to the workdir's test_size)."""
    from conftest import write_npz

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 16, 16, 3), np.uint8)
    test = rng.integers(0, 256, (40, 16, 16, 3), np.uint8)
    a = write_npz(tmp_path / "a.npz", num_train=300, num_test=40, train_images=train,
                  test_images=test)
    # The same test images; 30 training images, darker: statistics of its own would differ.
    b = write_npz(tmp_path / "b.npz", num_train=30, num_test=40, train_images=train[:30] // 4,
                  test_images=test)
    w = _pretrain_small(tmp_path, "--config=configs/cifar10.py:smoke", a,
                        "--config.data.validation_size=60", "--config.data.test_size=20",
                        "--config.model.kernel_sizes=(3, 3, 3)")
    assert json.loads((w / "config.json").read_text())["data"]["standardize"]
    before = snapshot(w)

    def encode(out: str, *args: str) -> dict[str, np.ndarray]:
        proc = run("encode", f"--workdir={w}", f"--output={tmp_path / out}", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with np.load(tmp_path / out) as f:
            return dict(f)

    own = encode("own.npz")  # the workdir's test split: its first test_size images
    other = encode("other.npz", f"--source=npz:{b}")  # all of the other file's test split
    assert len(own["labels"]) == 20 and len(other["labels"]) == 40
    np.testing.assert_allclose(other["features"][:20], own["features"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(other["labels"][:20], own["labels"])
    assert len(encode("train.npz", f"--source=npz:{b}", "--split=train")["labels"]) == 30
    assert_clean_failure(run("encode", f"--workdir={w}", f"--output={tmp_path / 'v.npz'}",
                             f"--source=npz:{b}", "--split=validation"),
                         "--validation_size", str(b))
    assert not (tmp_path / "v.npz").exists()
    assert snapshot(w) == before


def test_visualize_refuses_other_data_before_the_checkpoint(tmp_path):
    """visualize used to draw figures/ from any data it was pointed at (exit 0), and blamed
    the checkpoint for 3-channel data (`parameter c has shape (1,), expected (3,)`)."""
    import shutil

    from conftest import write_npz

    data = write_npz(tmp_path / "d.npz", num_train=300, num_test=50, shape=(28, 28))
    w = _pretrain_small(tmp_path, "--config=configs/mnist.py:smoke", data,
                        "--config.data.validation_size=60")
    copy = shutil.copy(data, tmp_path / "copy.npz")  # the same data elsewhere: accepted
    smoke = ("--config=configs/mnist.py:smoke", "--config.data.validation_size=60",
             "--config.data.pretrain_size=0", "--config.pretrain.layers=1")
    ok = run("visualize", f"--workdir={w}", *smoke, f"--config.data.source=npz:{copy}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (w / "figures" / "reconstructions_layer1.png").is_file()
    before = snapshot(w)
    larger = write_npz(tmp_path / "e.npz", num_train=300, num_test=50, shape=(32, 32))
    colour = write_npz(tmp_path / "c.npz", num_train=300, num_test=50, shape=(28, 28, 3))
    for other in (larger, colour):
        proc = run("visualize", f"--workdir={w}", *smoke, f"--config.data.source=npz:{other}")
        assert_clean_failure(proc, "other data", str(other), str(data))
        assert "ckpt" not in proc.stderr
        assert snapshot(w) == before
    # A workdir older than the data fingerprints: its channels still name the data.
    settings = w / "pretrain" / "settings.json"
    record = json.loads(settings.read_text())
    del record["data"]
    settings.write_text(json.dumps(record))
    before = snapshot(w)
    proc = run("visualize", f"--workdir={w}", *smoke, f"--config.data.source=npz:{colour}")
    assert_clean_failure(proc, str(colour), "3 channel(s)")
    assert "ckpt" not in proc.stderr and snapshot(w) == before


def test_a_class_sorted_file_is_refused_before_the_workdir_is_made(tmp_path):
    """Its last validation_size images, one class, used to become the validation set."""
    from conftest import write_npz

    labels = np.sort(np.arange(300) % 10).astype(np.uint8)
    data = write_npz(tmp_path / "sorted.npz", num_train=300, shape=(28, 28),
                     train_labels=labels)
    w = tmp_path / "w"
    proc = run("pretrain", "--config=configs/mnist.py:smoke", f"--config.data.source=npz:{data}",
               "--config.data.validation_size=60", "--config.data.pretrain_size=0",
               f"--workdir={w}")
    assert_clean_failure(proc, str(data), "sorted by class", "validation split", "shuffle")
    assert not w.exists()
