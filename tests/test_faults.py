"""The fault-injection suite: divergence, settings provenance, interrupted cleanup, write
failures (injected and on a real full disk), damaged checkpoints and records, signals, umask.
Killing runs at named writes is tested in test_pipelines.py (it shares that file's reference
run); bad input through the commands in test_bad_input.py. See docs/reliability.md."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.mnist
from pipelines import common
from scae import atomic, errors, interrupt
from scae import workdir as workdir_lib
from scae.data import inputs
from scae.errors import InputError, Interrupted
from scae.study import compare
from scae.study import pretrain as pretraining
from scae.train import checkpoint, retry


def test_divergence_stops_with_the_layer_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    config = configs.mnist.get_config("smoke")
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 0.01
    config.model.activation = "relu"  # unbounded, so the huge steps overflow
    config.pretrain.layers = 1
    config.pretrain.epochs = (1,)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    pretraining.pretrain(config, x, x[:16], tmp_path, log=lambda _: None)  # a good checkpoint first
    folder = tmp_path / "pretrain" / "ckpt" / "layer1"
    good = checkpoint.Checkpoints(folder)
    assert good.latest_step() == 2
    kept, _ = good.restore_raw(2)
    good.close()
    config.pretrain.epochs = (3,)  # train on from it, at a rate that diverges at once
    config.pretrain.learning_rate = 1e30
    with pytest.raises(FloatingPointError,
                       match=r"layer 1: .* epoch 2 by step [34]; the last good checkpoint "
                             r"\(step 2\) is kept"):
        pretraining.pretrain(config, x, x[:16], tmp_path, log=lambda _: None)
    after = checkpoint.Checkpoints(folder)
    assert after.latest_step() == 2
    np.testing.assert_array_equal(after.restore_raw(2)[0]["params"]["w"], kept["params"]["w"])
    after.close()
    config.pretrain.learning_rate = 0.01  # a rerun resumes from that checkpoint
    logs = []
    pretraining.pretrain(config, x, x[:16], tmp_path, log=logs.append)
    assert any("resuming at step 2/6" in m for m in logs), logs


def test_divergence_retries_halve_the_learning_rate_and_remember_it(tmp_path):
    config = configs.mnist.get_config("smoke")
    config.pretrain.optimizer = "sgd"
    config.pretrain.learning_rate = 1e30
    config.model.activation = "relu"
    config.pretrain.divergence_retries = 2
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    logs = []
    with pytest.raises(FloatingPointError, match="layer 1"):
        pretraining.pretrain(config, x, x[:16], tmp_path, log=logs.append)
    assert sum("retrying with the learning rate x" in m for m in logs) == 2
    scale = (tmp_path / "pretrain" / "ckpt" / "layer1.lr_scale.json").read_text()
    assert '"lr_scale": 0.25' in scale
    # A rerun starts from the remembered rate and has no retries left.
    logs = []
    with pytest.raises(FloatingPointError):
        pretraining.pretrain(config, x, x[:16], tmp_path, log=logs.append)
    assert not any("retrying" in m for m in logs)


def test_halving_lr_rescues_resumes_and_gives_up(tmp_path):
    path = tmp_path / "cell.lr_scale.json"
    calls, logs = [], []

    def train(scale):  # diverges above a quarter of the rate
        calls.append(scale)
        if scale > 0.3:
            raise FloatingPointError(f"diverged at x{scale}")
        return scale

    assert retry.halving_lr(train, path, retries=3, log=logs.append) == 0.25
    assert calls == [1.0, 0.5, 0.25] and len(logs) == 2 and "diverged at x0.5" in logs[1]
    assert retry.read_scale(path) == 0.25
    calls.clear()
    assert retry.halving_lr(train, path, retries=3, log=logs.append) == 0.25
    assert calls == [0.25]  # a rerun starts from the rate that last worked
    with pytest.raises(FloatingPointError, match="x0.5"):
        retry.halving_lr(train, tmp_path / "other.json", retries=1, log=logs.append)


def test_finetune_divergence_names_the_run_and_retries(tiny_npz_module, tmp_path):
    config = configs.mnist.get_config("smoke")
    config.data.source = f"npz:{tiny_npz_module}"
    config.data.validation_size = 60
    config.data.pretrain_size = 0
    config.model.activation = "relu"
    config.finetune.optimizer = "sgd"
    config.finetune.learning_rate = 1e30
    config.finetune.divergence_retries = 2
    data = inputs.build(config.data, config.seed)
    logs = []
    with pytest.raises(FloatingPointError,
                       match=r"random run at 50 labels, seed 0: .* epoch \d+ by step \d+"):
        compare._run_group(config, data, None, 50, "random", [0, 1], tmp_path, logs.append)
    assert sum("retrying with the learning rate x" in m for m in logs) == 2
    assert retry.read_scale(tmp_path / "ckpt" / "50_random_s0-1.lr_scale.json") == 0.25
    # The last good checkpoint (the first step's) is kept, and only finished checkpoints: no
    # partial one is left behind.
    ckpts = list((tmp_path / "ckpt" / "50_random_s0-1").glob("*"))
    assert ckpts and all(p.name.isdigit() for p in ckpts), ckpts
    assert not list((tmp_path / "ckpt").rglob("*orbax-checkpoint-tmp*"))


def test_sweep_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    keep = [tmp_path / "compare" / "runs.jsonl", tmp_path / "pretrain" / "ckpt" / "layer1" / "8"
            / "state" / "data", tmp_path / "notes.tmp", tmp_path / ".lock"]
    debris = [tmp_path / "compare" / ".runs.jsonl.k3j2.tmp",
              tmp_path / "pretrain" / ".loss.png.x8q.tmp",
              tmp_path / "pretrain" / "ckpt" / "layer1" / "12.orbax-checkpoint-tmp"]
    for p in keep + debris[:2]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (debris[2] / "state").mkdir(parents=True)
    assert sorted(atomic.sweep(tmp_path)) == sorted(debris)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in debris)


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    atomic.write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["runs.jsonl"]


# --- 1. a workdir never reports results made under other settings ---------------------------

ROOT = Path(__file__).resolve().parents[1]


def _results(w: Path, *stages: str) -> None:
    """Stand-in records for ``stages``: the guard looks at what exists, not at its content."""
    for s in stages:
        (w / s).mkdir(parents=True, exist_ok=True)
        (w / s / ("runs.jsonl" if s == "compare" else "metrics.jsonl")).write_text("{}\n")


def _smoke(**changes):
    config = configs.mnist.get_config("smoke")
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def test_pretrain_with_other_finetune_settings_does_not_relabel_the_compare_runs(tmp_path):
    # compare (lr 0.02), then pretrain with lr 0.5, then compare with lr 0.5: the last must not
    # take the old runs as its own. The old code rewrote config.json in the pretrain step.
    w = tmp_path / "w"
    common.guard_workdir(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare")
    other = _smoke(**{"finetune.learning_rate": 0.5})
    common.guard_workdir(other, w, "pretrain", overwrite=False)  # the stack is valid
    assert json.loads((w / "config.json").read_text())["finetune"]["learning_rate"] == 0.02
    with pytest.raises(InputError) as refused:
        common.guard_workdir(other, w, "compare", overwrite=False)
    line = str(refused.value)
    assert "finetune.learning_rate: 0.02 in the workdir, 0.5 now" in line
    assert "--overwrite" in line and "new --workdir" in line and "\n" not in line
    assert (w / "compare" / "runs.jsonl").exists()
    # --overwrite deletes the stale runs only: the stack does not depend on fine-tuning.
    common.guard_workdir(other, w, "compare", overwrite=True)
    assert not (w / "compare" / "runs.jsonl").exists()
    assert (w / "pretrain" / "metrics.jsonl").exists()
    assert json.loads((w / "config.json").read_text())["finetune"]["learning_rate"] == 0.5
    recorded = json.loads((w / "compare" / "settings.json").read_text())
    assert recorded["digest"] == workdir_lib.settings_digest(other, "compare")


def test_a_changed_stack_makes_both_stages_stale(tmp_path):
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare", "figures")
    changed = _smoke(**{"pretrain.learning_rate": 0.002})
    with pytest.raises(InputError, match=r"pretrain.learning_rate: 0.001 in the workdir, "
                                         r"0.002 now"):
        workdir_lib.guard(changed, w, "pretrain", overwrite=False)
    workdir_lib.guard(changed, w, "pretrain", overwrite=True)
    assert not any((w / d).exists() for d in ("compare", "figures"))
    assert not (w / "pretrain" / "metrics.jsonl").exists()
    assert not [p for p in w.iterdir() if p.name.startswith(".trash")]


def test_label_sizes_and_seeds_select_runs_without_making_them_stale(tmp_path):
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare")
    more = _smoke(**{"compare.label_sizes": (100, 200), "compare.num_seeds": 5,
                     "compare.vmap_seeds": False, "finetune.divergence_retries": 2})
    assert workdir_lib.settings_digest(more, "compare") == \
        workdir_lib.settings_digest(_smoke(), "compare")
    workdir_lib.guard(more, w, "compare", overwrite=False)
    assert (w / "compare" / "runs.jsonl").exists()
    assert json.loads((w / "config.json").read_text())["compare"]["num_seeds"] == 5
    assert workdir_lib.settings_digest(_smoke(**{"finetune.epochs": 3}), "compare") != \
        workdir_lib.settings_digest(_smoke(), "compare")
    assert workdir_lib.settings_digest(_smoke(**{"finetune.epochs": 3}), "pretrain") == \
        workdir_lib.settings_digest(_smoke(), "pretrain")


def test_a_changed_head_keeps_the_stack(tmp_path):
    """The keys only the CNN's head reads (dropout, fc_width, num_classes) make the compare
    runs stale, never the stack: --overwrite deletes the runs and keeps the stack."""
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare")
    for key, value in (("model.dropout", 0.5), ("model.fc_width", 8),
                       ("model.num_classes", 12)):
        changed = _smoke(**{key: value})
        assert workdir_lib.settings_digest(changed, "pretrain") == \
            workdir_lib.settings_digest(_smoke(), "pretrain"), key
        workdir_lib.guard(changed, w, "pretrain", overwrite=False)  # the stack still holds
        with pytest.raises(InputError, match=rf"compare: {re.escape(key)}"):
            workdir_lib.guard(changed, w, "compare", overwrite=False)
    workdir_lib.guard(_smoke(**{"model.dropout": 0.5}), w, "compare", overwrite=True)
    assert not (w / "compare" / "runs.jsonl").exists()
    assert (w / "pretrain" / "metrics.jsonl").exists()


def _filters_config():
    import configs.filters_mnist

    return configs.filters_mnist.get_config("smoke")


def _ended(w: Path) -> None:
    """As if the command holding ``w``'s lock had ended."""
    workdir_lib.release(w)


def test_other_data_at_the_same_path_is_refused_naming_the_data_and_the_workdir(tmp_path):
    w = tmp_path / "w"
    source = "npz:/data/d.npz"
    first = workdir_lib.DataFingerprint(source, "a" * 32)
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False, data=first)
    _results(w, "pretrain", "compare")
    _ended(w)
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False, data=first)  # the same: reused
    _ended(w)
    other = workdir_lib.DataFingerprint(source, "b" * 32)
    with pytest.raises(InputError) as refused:
        workdir_lib.guard(_smoke(), w, "pretrain", overwrite=False, data=other)
    message = str(refused.value)
    assert str(w) in message and source in message and "other data" in message, message
    assert "--overwrite" in message
    assert (w / "pretrain" / "metrics.jsonl").exists()
    workdir_lib.guard(_smoke(), w, "compare", overwrite=True, data=other)  # deletes the stale
    assert not (w / "pretrain" / "metrics.jsonl").exists()
    assert not (w / "compare" / "runs.jsonl").exists()
    recorded = json.loads((w / "pretrain" / "settings.json").read_text())
    assert recorded["data"] == {"name": source, "digest": "b" * 32}


def test_runs_evaluated_on_another_test_split_are_refused_in_an_older_workdir(tmp_path):
    # A workdir whose settings.json predates data fingerprints: its run records still carry
    # the test split's content fingerprint.
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain")
    (w / "compare" / "runs.jsonl").write_text(json.dumps({"data_fingerprint": "t1"}) + "\n")
    _ended(w)
    same = workdir_lib.DataFingerprint("mnist", "d" * 32, test="t1")
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False, data=same)
    _ended(w)
    for settings in w.glob("*/settings.json"):  # as written before data fingerprints
        record = json.loads(settings.read_text())
        record.pop("data")
        settings.write_text(json.dumps(record))
    with pytest.raises(InputError, match="other data: the test split of mnist"):
        workdir_lib.guard(_smoke(), w, "compare", overwrite=False,
                          data=workdir_lib.DataFingerprint("mnist", "d" * 32, test="t2"))


def test_the_filter_experiment_never_shares_a_workdir_with_pretrain_or_compare(tmp_path):
    """Filters on a compare workdir used to be accepted and relabel its config.json (the
    compare model kept, filters trained with another), after which the identical command was
    refused and the suggested --overwrite would delete valid results."""
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare")
    _ended(w)
    before = (w / "config.json").read_text()
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"holds pretrain/ and compare/ results of another "
                                             r"command; a filter experiment cannot share"):
            workdir_lib.guard(_filters_config(), w, "filters", overwrite=overwrite)
    assert (w / "config.json").read_text() == before and (w / "compare" / "runs.jsonl").exists()
    f = tmp_path / "f"
    workdir_lib.guard(_filters_config(), f, "filters", overwrite=False)
    (f / "plain").mkdir()
    (f / "filters.png").write_bytes(b"png")
    _ended(f)
    workdir_lib.guard(_filters_config(), f, "filters", overwrite=False)  # its own: resumed
    _ended(f)
    for stage in ("pretrain", "compare"):
        with pytest.raises(InputError, match="holds filter-experiment"):
            workdir_lib.guard(_smoke(), f, stage, overwrite=False)
    assert "variants" in json.loads((f / "config.json").read_text())


def test_the_api_claims_a_workdir_like_the_commands(tmp_path):
    """scae.api.pretrain(images, workdir=W) a second time with other settings or other images
    must not return the old stack: claimed() refuses, naming the keys or the data, and gives
    the lock back when the block ends."""
    w = tmp_path / "w"
    images = workdir_lib.DataFingerprint("the images", "a" * 32)
    with workdir_lib.claimed(_smoke(), w, "pretrain", images):
        _results(w, "pretrain")
        assert str(w.resolve()) in workdir_lib._LOCKS
    assert str(w.resolve()) not in workdir_lib._LOCKS  # given back
    with workdir_lib.claimed(_smoke(), w, "pretrain", images):  # the same: resumed
        pass
    with pytest.raises(InputError, match=r"pretrain.learning_rate: .* in the workdir, 0.5 now"
                                         r".*delete that workdir") as refused:
        with workdir_lib.claimed(_smoke(**{"pretrain.learning_rate": 0.5}), w, "pretrain",
                                 images):
            pass
    assert "--" not in str(refused.value)  # no command-line flags in the API's message
    with pytest.raises(InputError, match="other data: the images"):
        with workdir_lib.claimed(_smoke(), w, "pretrain",
                                 workdir_lib.DataFingerprint("the images", "b" * 32)):
            pass
    assert (w / "pretrain" / "metrics.jsonl").exists()
    assert str(w.resolve()) not in workdir_lib._LOCKS


def test_a_summary_reports_only_the_runs_asked_under_these_settings():
    config = _smoke(**{"compare.label_sizes": (100, 200), "compare.num_seeds": 2,
                       "compare.arms": ("random", "pretrained")})
    digest = workdir_lib.settings_digest(config, "compare")
    rows = [{"label_size": size, "arm": arm, "seed": seed, "settings": digest}
            for size in (100, 200, 300) for arm in ("random", "frozen") for seed in range(3)]
    rows.append({"label_size": 100, "arm": "random", "seed": 0, "settings": "0123456789ab"})
    rows.append({"label_size": 200, "arm": "random", "seed": 1})  # older records: no digest
    kept = workdir_lib.asked_runs(config, rows)
    assert {(r["label_size"], r["seed"]) for r in kept} == {(100, 0), (100, 1), (200, 0), (200, 1)}
    assert all(r["arm"] == "random" and r.get("settings", digest) == digest for r in kept)
    assert len(kept) == 5


def test_a_key_added_later_with_its_default_keeps_old_workdirs_valid(tmp_path):
    w = tmp_path / "w"
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)
    _results(w, "pretrain", "compare")
    for name in ("config.json", "pretrain/settings.json", "compare/settings.json"):
        record = json.loads((w / name).read_text())
        sections = record.get("sections", record)
        if "finetune" in sections:
            del sections["finetune"]["weight_decay"]  # as written before the key existed
        (w / name).write_text(json.dumps(record))
    workdir_lib.guard(_smoke(), w, "compare", overwrite=False)  # default 0.0: same experiment
    _results(w, "compare")
    with pytest.raises(InputError, match=r"finetune.weight_decay: 0.0 in the workdir, 0.1 now"):
        workdir_lib.guard(_smoke(**{"finetune.weight_decay": 0.1}), w, "compare", False)


@pytest.mark.parametrize("make,fragment", [
    (lambda w: w.write_text("x"), "is a file"),
    (lambda w: (w.parent / "f").write_text("x"), "which is a file"),
    (lambda w: (w.mkdir(), (w / "compare").write_text("x")), "compare: is a file"),
    (lambda w: (w.mkdir(), (w / "config.json").mkdir()), "is a folder"),
])
def test_unusable_workdirs_are_refused_before_the_lock(tmp_path, make, fragment):
    w = tmp_path / "w"
    make(w)
    target = tmp_path / "f" / "w" if fragment == "which is a file" else w
    with pytest.raises(InputError, match=fragment):
        workdir_lib.guard(_smoke(), target, "compare", overwrite=False)
    assert not list(tmp_path.rglob(".lock"))  # refused before the lock: none anywhere


def test_a_read_only_workdir_is_refused(tmp_path, monkeypatch):
    # Root may write anywhere, so the file system's refusal is injected where the probe meets it.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(workdir_lib.tempfile, "TemporaryFile", read_only)
    with pytest.raises(InputError, match="read-only file system"):
        workdir_lib.guard(_smoke(), tmp_path / "w", "compare", overwrite=False)
    assert not (tmp_path / "w").exists()


# --- 2. cleanup that a kill cannot leave half done -------------------------------------------


def test_a_kill_during_cleanup_leaves_nothing_half_deleted(tmp_path, monkeypatch):
    ckpt = tmp_path / "pretrain" / "ckpt" / "layer1" / "8"
    (ckpt / "state").mkdir(parents=True)
    (ckpt / "state" / "data").write_text("x")
    (ckpt / "record").mkdir()

    def killed(path, *args, **kwargs):  # dies after deleting part of the folder
        for p in sorted(Path(path).rglob("data")):
            p.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.remove_tree(tmp_path / "pretrain")
    monkeypatch.undo()
    assert not (tmp_path / "pretrain").exists()  # gone whole, never seen half deleted
    trash = [p.name for p in tmp_path.iterdir()]
    assert len(trash) == 1 and trash[0].startswith(atomic.TRASH_PREFIX)
    assert [p.name for p in atomic.sweep(tmp_path)] == trash and not any(tmp_path.iterdir())


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "b.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o640


# --- 3. faults named for what they are -----------------------------------------------------


def test_write_failures_are_classified_through_wrappers_and_text():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/compare/runs.jsonl")
    try:
        try:
            raise full
        except OSError as e:
            raise ValueError("RESOURCE_EXHAUSTED: could not write") from e
    except ValueError as wrapped:
        error = errors.as_write_error(wrapped)
    assert error.path == "/w/compare/runs.jsonl" and "no space left" in error.cause.lower()
    orbax = RuntimeError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
                         'file "/w/pretrain/ckpt/layer1/8.orbax-checkpoint-tmp/": Failed to '
                         "write 338156 bytes: [os_error_code='28']")
    assert "no space left" in errors.as_write_error(orbax).cause
    assert not errors.is_device_oom(orbax)  # a full disk must not look like a small GPU
    assert errors.as_write_error(ValueError("RESOURCE_EXHAUSTED: Out of memory")) is None
    assert errors.as_write_error(OSError(errno.ENOENT, "no such file")) is None


def test_only_a_real_device_out_of_memory_counts_as_one():
    import jax.numpy as jnp

    with pytest.raises(Exception) as oom:  # noqa: PT011 - jax's runtime error type
        jnp.zeros((2**42,), jnp.float32).block_until_ready()
    assert errors.is_device_oom(oom.value)
    assert not errors.is_device_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))


def test_a_full_disk_during_a_checkpoint_save_is_a_write_error(tmp_path):
    # A real file-system refusal inside orbax/tensorstore: the file-size limit (EFBIG).
    code = ("import resource, signal, sys, numpy as np\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "from scae.train import checkpoint\n"
            "c = checkpoint.Checkpoints(sys.argv[1])\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            "try:\n"
            "    c.save(1, {'w': np.random.rand(100000).astype(np.float32)}, {'a': 1})\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l1")], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("WriteError cannot write "), proc.stdout + proc.stderr[-2000:]
    assert str(tmp_path / "l1" / "1") in proc.stdout and "file too large" in proc.stdout
    assert "Traceback" not in proc.stderr


# --- 5. damaged files ------------------------------------------------------------------------


def _checkpoint(folder: Path):
    state = {"params": {"w": np.arange(40, dtype=np.float32).reshape(5, 8)},
             "opt": (np.zeros(3, np.float32),)}
    c = checkpoint.Checkpoints(folder)
    c.save(8, state, {"layer_records": []})
    c.close()
    return state


@pytest.mark.parametrize("damage", ["truncate_manifest", "flip_data", "truncate_record",
                                    "delete_metadata"])
def test_a_damaged_checkpoint_is_one_line_naming_the_folder_and_the_remedy(tmp_path, damage):
    folder = tmp_path / "layer1"
    state = _checkpoint(folder)
    step = folder / "8"
    if damage == "truncate_manifest":
        p = step / "state" / "manifest.ocdbt"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "flip_data":
        p = next(f for f in (step / "state" / "d").iterdir())
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        p.write_bytes(bytes(raw))
    elif damage == "truncate_record":
        p = step / "record" / "metadata"
        p.write_bytes(p.read_bytes()[:5])
    else:
        (step / "state" / "_METADATA").unlink()
    c = checkpoint.Checkpoints(folder)
    with pytest.raises(InputError) as refused:
        c.restore(c.latest_step(), state)
    c.close()
    line = str(refused.value)
    assert str(step) in line and "damaged checkpoint" in line and "\n" not in line
    assert f"delete {folder}" in line and "--overwrite" in line


def test_a_torn_last_line_is_dropped_and_a_damaged_middle_line_refused(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"seed": 0}\n{"seed": 1}\n{"seed": 2, "test_err')
    assert atomic.read_jsonl(path) == [{"seed": 0}, {"seed": 1}]
    path.write_bytes(b'{"seed": 0}\n{"seed": 1}\n\xff\xfe\n')
    assert atomic.read_jsonl(path) == [{"seed": 0}, {"seed": 1}]
    path.write_text('{"seed": 0}\n{"se\n{"seed": 2}\n')
    with pytest.raises(InputError, match=r"runs.jsonl: line 2 is not valid JSON"):
        atomic.read_jsonl(path)
    assert atomic.read_jsonl(tmp_path / "absent.jsonl") == []

    path.write_text('{"layer": 1}\n{"lay')
    assert atomic.read_jsonl(path) == [{"layer": 1}]
    (tmp_path / "scale.json").write_text('{"lr_sc')
    assert atomic.read_json(tmp_path / "scale.json", {"lr_scale": 1.0}) == {"lr_scale": 1.0}


# --- 6. signals ------------------------------------------------------------------------------


def test_a_signal_in_a_weakref_callback_is_not_lost(monkeypatch):
    # Raised from the handler, the interruption would land in the callback, where Python
    # only prints it: the old bug. Recorded instead, it is raised at the next check.
    monkeypatch.setattr(interrupt, "GRACE_S", 600.0)  # no watchdog exit of the test process
    interrupt.install()
    try:
        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda _: (os.kill(os.getpid(), signal.SIGINT),
                                            [None for _ in range(1000)]))
        del thing
        assert ref() is None
        with pytest.raises(Interrupted) as caught:
            interrupt.check("layer 1, step 8/16")
        assert caught.value.exit_status == 130
        assert "interrupted at layer 1, step 8/16 (SIGINT)" in str(caught.value)
    finally:
        interrupt.uninstall()


def test_a_deferred_block_holds_the_first_signal_until_it_ends(monkeypatch):
    monkeypatch.setattr(interrupt, "GRACE_S", 600.0)
    interrupt.install()
    try:
        done = []
        with pytest.raises(Interrupted, match="interrupted at saving"):
            with interrupt.at("saving"), interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append(True)
        assert done == [True]
        with pytest.raises(Interrupted):
            interrupt.check()
    finally:
        interrupt.uninstall()


def _command_process(tmp_path: Path, module: str = "pretrain",
                     overrides: tuple[str, ...] = ("--config.pretrain.epochs=(50,1,1)",)
                     ) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", "--config=configs/mnist.py:smoke",
         *overrides, f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                           PYTHONUNBUFFERED="1"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _until(proc: subprocess.Popen, pattern: str) -> str:
    """Reads the command's stderr up to the first line matching ``pattern``: an event of the
    run (never a clock), so that the test does not depend on how busy the machine is."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"the command ended before {pattern!r}:\n{seen[-3000:]}")


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                           (signal.SIGHUP, 129)])
def test_a_signal_during_training_stops_with_its_status_and_line_every_time(tmp_path, signum,
                                                                           status):
    """Signalled mid-training twice in a row (the second time after resuming): each time the
    signal's status, one line naming the layer and step (not a source location), no crash at
    exit (SIGSEGV, 139, came from Python's teardown under XLA's and orbax's threads), no
    traceback and no temporary file or checkpoint folder left."""
    name = signal.Signals(signum).name
    for attempt in range(2):
        proc = _command_process(tmp_path)
        try:
            # After an evaluation (and its checkpoint): training is under way; on the second
            # attempt, the evaluation after the resumed one.
            seen = _until(proc, r"^layer 1 epoch \d+:" if attempt == 0 else r"resuming at")
            if attempt:
                seen += _until(proc, r"^layer 1 epoch \d+:")
            sent = time.monotonic()
            proc.send_signal(signum)
            rest = proc.communicate(timeout=120)[1]
            took = time.monotonic() - sent
        finally:
            proc.kill()
        assert proc.returncode == status, (attempt, (seen + rest)[-3000:])
        assert took < 60, took
        assert "Traceback" not in rest, rest[-3000:]
        errors_seen = _error_lines(rest)
        assert len(errors_seen) == 1, rest[-3000:]
        assert re.fullmatch(rf"error: interrupted at layer 1, step \d+/\d+ \({name}\); rerun "
                            r"the same command to resume", errors_seen[0]), errors_seen
        w = tmp_path / "w"
        assert not list(w.rglob("*.tmp")) and not list(w.rglob("*orbax-checkpoint-tmp*"))


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_fine_tuning_ends_compare_with_its_status(tmp_path, signum, status):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.compare", "--config=configs/mnist.py:smoke",
         "--config.pretrain.layers=1", "--config.compare.label_sizes=(50,100)",
         "--config.finetune.epochs=20", f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                           PYTHONUNBUFFERED="1"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        seen = _until(proc, r"test error")  # a first cell is recorded; the next one trains
        proc.send_signal(signum)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == status, (seen + rest)[-3000:]
    errors_seen = _error_lines(rest)
    assert len(errors_seen) == 1 and errors_seen[0].startswith("error: interrupted at "), rest
    assert f"({signal.Signals(signum).name})" in errors_seen[0]
    assert "Traceback" not in rest
    w = tmp_path / "w"
    assert not list(w.rglob("*.tmp")) and not list(w.rglob("*orbax-checkpoint-tmp*"))
    assert atomic.read_jsonl(w / "compare" / "runs.jsonl")  # the recorded cell is kept


def _signalled(proc: subprocess.Popen, pattern: str, *signums: int) -> tuple[str, str]:
    """Waits for the first stderr line matching ``pattern``, sends ``signums`` back to back and
    returns the command's stderr before and after them."""
    try:
        seen = _until(proc, pattern)
        for signum in signums:
            proc.send_signal(signum)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    return seen, rest


def test_a_signal_before_a_layers_first_check_point_names_that_layer(tmp_path):
    """SIGTERM as layer 2's progress bar appears (its set-up done, no chunk trained yet): the
    line names layer 2, not the last check point passed, which was layer 1's last step, or,
    in the rerun that finds layer 1 finished, the envelope's "start-up"."""
    for attempt in range(2):
        proc = _command_process(tmp_path, overrides=("--config.pretrain.epochs=(1,50,1)",))
        seen, rest = _signalled(proc, r"^layer 2:\s+\d+%", signal.SIGTERM)
        assert proc.returncode == 143, (attempt, (seen + rest)[-3000:])
        assert attempt == 0 or "resuming at" in seen, seen[-3000:]
        errors_seen = _error_lines(rest)
        assert len(errors_seen) == 1, rest[-3000:]
        assert re.fullmatch(r"error: interrupted at layer 2, step \d+/400 \(SIGTERM\); rerun the "
                            r"same command to resume", errors_seen[0]), (attempt, errors_seen)
        assert not (tmp_path / "w" / ".lock").exists()


def _compare_process(tmp_path: Path) -> subprocess.Popen:
    """The smoke comparison on a one-layer stack, its cells long enough (20 epochs) that a
    signal sent as a cell's progress bar appears lands inside that cell."""
    return _command_process(tmp_path, "compare", overrides=(
        "--config.pretrain.layers=1", "--config.finetune.epochs=20"))


def _assert_one_line_at(stderr: str, where: str, signame: str) -> None:
    """``stderr`` holds exactly one error line: the interruption at ``where`` (a pattern) by
    ``signame``."""
    errors_seen = _error_lines(stderr)
    assert len(errors_seen) == 1, stderr[-3000:]
    assert re.fullmatch(rf"error: interrupted at {where} \({signame}\); rerun the same command "
                        r"to resume", errors_seen[0]), errors_seen


@pytest.mark.slow
def test_a_signal_before_a_cells_first_check_point_names_that_cell(tmp_path):
    """SIGTERM as the frozen cell's progress bar appears: the line names the frozen cell, not
    the pretrained cell before it, whose last step was the last check point passed."""
    proc = _compare_process(tmp_path)
    seen, rest = _signalled(proc, r"^frozen \d+ labels x\d+ seeds:\s+0%", signal.SIGTERM)
    assert proc.returncode == 143, (seen + rest)[-3000:]
    _assert_one_line_at(rest, r"frozen \d+ labels x\d+ seeds, step \d+/\d+", "SIGTERM")
    assert not (tmp_path / "w" / ".lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_during_fine_tuning_ends_once_and_gives_the_lock_back(tmp_path,
                                                                             second):
    """Two signals at once in a fine-tuning cell: the process ends with the first one's
    status and one line naming the cell, and the workdir's lock is given back, though the
    second signal ends the process by os._exit, which skips the lock's exit hook. (SIGINT
    then SIGTERM reach the handler as two signals even while a compiled chunk holds the main
    thread; two SIGINTs sent then may reach it as one.)"""
    proc = _compare_process(tmp_path)
    seen, rest = _signalled(proc, r"^pretrained \d+ labels x\d+ seeds:\s+0%", signal.SIGINT,
                            second)
    assert proc.returncode == 130, (seen + rest)[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    _assert_one_line_at(rest, r"pretrained \d+ labels x\d+ seeds, step \d+/\d+", "SIGINT")
    assert not (tmp_path / "w" / ".lock").exists()


class _Exited(BaseException):
    """What os._exit raises in the tests below, which call the handler in this process."""


def _no_exit(status: int) -> None:
    raise _Exited(status)


def test_a_second_signal_gives_the_workdir_lock_back_as_it_ends_the_process(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(interrupt, "GRACE_S", 600.0)
    monkeypatch.setattr(os, "_exit", _no_exit)
    read_end, write_end = os.pipe()
    monkeypatch.setattr(interrupt._state, "stderr_fd", write_end)
    w = tmp_path / "w"
    workdir_lib.lock(w)
    interrupt.install()
    try:
        with interrupt.at("saving layer 2"):
            interrupt._handler(signal.SIGINT, sys._getframe())
            assert (w / ".lock").exists()  # the first one is only recorded
            with pytest.raises(_Exited) as ended:
                interrupt._handler(signal.SIGINT, sys._getframe())
        assert ended.value.args == (130,)
        assert not (w / ".lock").exists()
    finally:
        interrupt.uninstall()
        workdir_lib.release(w)
        os.close(write_end)
    assert os.read(read_end, 4096).decode().split("\n") == [
        "", "error: interrupted at saving layer 2 (SIGINT); rerun the same command to resume", ""]
    os.close(read_end)


def test_a_signal_while_the_envelope_ends_the_process_changes_nothing(monkeypatch):
    """Once the envelope is ending the process (its line, the locks, os._exit), a further
    signal neither prints a second line nor ends the process before the locks are given back,
    and the watchdog stands down."""
    monkeypatch.setattr(interrupt, "GRACE_S", 600.0)
    monkeypatch.setattr(os, "_exit", _no_exit)
    read_end, write_end = os.pipe()
    monkeypatch.setattr(interrupt._state, "stderr_fd", write_end)
    interrupt.install()
    try:
        interrupt._handler(signal.SIGINT, sys._getframe())
        with pytest.raises(Interrupted, match=r"interrupted at layer 2, step 4/8 \(SIGINT\)"):
            interrupt.check("layer 2, step 4/8")
        interrupt.finish()  # what the envelope calls before its line
        for signum in (signal.SIGINT, signal.SIGTERM):
            interrupt._handler(signum, sys._getframe())
        assert interrupt.pending().exit_status == 130
    finally:
        interrupt.uninstall()
        os.close(write_end)
    assert os.read(read_end, 4096) == b""
    os.close(read_end)


def test_a_signal_at_start_up_is_not_lost(tmp_path):
    proc = _command_process(tmp_path)
    try:
        time.sleep(1.0)  # importing jax
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, rest[-3000:]
    assert _error_lines(rest) == [line for line in rest.splitlines() if line.strip()][-1:]
    assert not (tmp_path / "w" / "pretrain").exists()


def test_without_a_check_point_the_watchdog_ends_the_process(tmp_path):
    # Code that never reaches interrupt.check (a long compilation, say) still stops.
    code = ("import os, signal, time\n"
            "from scae import interrupt\n"
            "interrupt.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(60)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 143 and time.monotonic() - start < interrupt.GRACE_S + 10
    assert proc.stderr.strip().startswith("error: interrupted at start-up (SIGTERM)")


def test_the_watchdog_gives_the_workdir_lock_back_as_it_ends_the_process(tmp_path):
    # os._exit skips the atexit hook that gives the workdir's lock back.
    code = ("import os, signal, sys, time\n"
            "from scae import interrupt, workdir\n"
            "workdir.lock(sys.argv[1])\n"
            "interrupt.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(60)\n")
    w = tmp_path / "w"
    proc = subprocess.run([sys.executable, "-c", code, str(w)], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().startswith("error: interrupted at start-up (SIGTERM)")
    assert w.is_dir() and not (w / ".lock").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, almost full; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here")
    try:
        stat = os.statvfs(mount)
        (mount / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - 6 * 4096))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_74_and_the_rerun_resumes(small_disk):
    w = small_disk / "w"
    args = [sys.executable, "-m", "pipelines.pretrain", "--config=configs/mnist.py:smoke",
            "--config.pretrain.layers=1", f"--workdir={w}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("layer 1")]
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert len(lines) == 1 and "no space left on device" in lines[0], proc.stderr[-3000:]
    assert str(w / "pretrain" / "ckpt" / "layer1") in lines[0]
    assert json.loads((w / "config.json").read_text())["seed"] == 0  # written whole
    (small_disk / "filler").unlink()
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(w.rglob("*orbax-checkpoint-tmp*")) and not list(w.rglob("*.tmp"))


def test_a_sigkill_during_overwrite_cleanup_leaves_no_half_deleted_checkpoint(tmp_path):
    config = configs.mnist.get_config("smoke")
    w = tmp_path / "w"
    workdir_lib.guard(config, w, "pretrain", overwrite=False)
    for k in (1, 2, 3):  # a stack's checkpoints; their content does not matter here
        _checkpoint(w / "pretrain" / "ckpt" / f"layer{k}")
    workdir_lib._LOCKS.pop(str(w.resolve())).close()  # as if that command had ended
    args = ["pipelines.pretrain", "--config=configs/mnist.py:smoke", "--config.model.fc_width=8",
            "--config.pretrain.layers=0", "--overwrite", f"--workdir={w}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    # SIGKILL at the second checkpoint file that the deletion of the stale stack removes
    # (rmtree names them relative to their folder's descriptor).
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at.py"), "os.remove",
                             "^(_CHECKPOINT_METADATA|commit_success.txt|manifest.ocdbt)$", "2",
                             *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL and "killed at os.remove" in killed.stderr, \
        killed.stderr[-2000:]
    assert not (w / "pretrain").exists(), killed.stderr[-500:]  # moved away whole
    assert [p.name for p in w.iterdir() if p.name.startswith(atomic.TRASH_PREFIX)]
    again = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [p for p in w.rglob("*") if p.name.startswith(atomic.TRASH_PREFIX)]
    assert json.loads((w / "config.json").read_text())["model"]["fc_width"] == 8


def test_a_divergence_retry_rescues_the_run_from_its_last_good_checkpoint(tmp_path):
    """The driver's own retry: a phase that diverges at step 7 at the full learning rate (an
    optimiser that turns non-finite from its 7th update at scale 1) restarts at half the rate
    from its last good checkpoint (step 4), not from scratch, and finishes."""
    import jax.numpy as jnp
    import optax

    from scae.train import driver

    def make_tx(scale):
        base = optax.sgd(0.1 * scale)

        def update(grads, state, params=None):
            updates, inner = base.update(grads, state[0], params)
            poison = jnp.where((scale == 1.0) & (state[1] >= 6), jnp.nan, 0.0)
            return jax.tree.map(lambda u: u + poison, updates), (inner, state[1] + 1)

        return optax.GradientTransformation(lambda p: (base.init(p), jnp.zeros((), jnp.int32)),
                                            update)

    logs = []
    phase = driver.Phase(
        name="toy", ckpt_dir=tmp_path / "ckpt", plan=driver.plan(8, 2, 3),
        loss_fn=lambda p, x, k: jnp.mean((x - p["w"]) ** 2), make_tx=make_tx,
        params={"w": jnp.zeros((1,))}, data=jnp.arange(8.0), pool=jnp.arange(8)[None],
        order_key=jax.random.PRNGKey(0)[None], step_key=jax.random.PRNGKey(1)[None], seeds=(0,),
        steps_per_call=2,
        checkpoint_every=4, eval_epochs=frozenset(), retries=1, log=logs.append)
    result = driver.train(phase)
    assert result.lr_scale == 0.5 and bool(jnp.isfinite(result.state["params"]["w"]))
    assert any("non-finite" in m and "retrying with the learning rate x0.5" in m
               for m in logs), logs
    assert any("resuming at step 4/12" in m for m in logs), logs
