"""Greedy stack training: the loss falls, runs are deterministic and resume exactly. And the
stack as a value: what save may replace, project_filters' layers, encoding in batches."""

import errno
import importlib.resources
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import two_layer_config as _config
from flax import nnx

import scae
from scae import api, atomic
from scae.errors import InputError, WriteError
from scae.models import modules as models
from scae.models import stack
from scae.study import pretrain as pretraining
from scae.train import checkpoint, driver, optim


@pytest.fixture(scope="module")
def images():
    x = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"][:192]
    return jax.numpy.asarray(x[..., None] / 255.0, jax.numpy.float32)


def _quiet(_):
    pass


def test_loss_decreases_and_runs_are_deterministic(tmp_path, images):
    config = _config(epochs=(4, 1), learning_rate=0.05)
    a = pretraining.pretrain(config, images, images[:64], tmp_path / "a", log=_quiet)
    b = pretraining.pretrain(config, images, images[:64], tmp_path / "b", log=_quiet)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(a), models.params_of(b))
    records = atomic.read_jsonl(tmp_path / "a" / "pretrain" / "metrics.jsonl")
    layer1 = [r for r in records if r["layer"] == 1]
    assert [r["epoch"] for r in layer1] == [1, 2, 3, 4]
    assert layer1[-1]["train_mse"] < layer1[0]["train_mse"]
    assert layer1[-1]["val_mse"] < layer1[0]["val_mse"]


def test_resume_after_interruption_gives_the_same_parameters(tmp_path, images, monkeypatch):
    config = _config()
    reference = pretraining.pretrain(config, images, images[:64], tmp_path / "ref", log=_quiet)

    saves = []
    real_save = checkpoint.Checkpoints.save

    def save_then_die(self, step, state, record):
        real_save(self, step, state, record)
        saves.append(step)
        if len(saves) == 2:  # layer 1, mid-epoch 1... then killed
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain(config, images, images[:64], tmp_path / "run", log=_quiet)
    monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
    logs = []
    resumed = pretraining.pretrain(config, images, images[:64], tmp_path / "run", log=logs.append)
    assert any("resuming at step" in m for m in logs)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 models.params_of(reference), models.params_of(resumed))
    # The per-epoch records survive the kill too (times differ; losses do not).
    keys = ("layer", "epoch", "step", "train_mse", "val_mse")
    ref = atomic.read_jsonl(tmp_path / "ref" / "pretrain" / "metrics.jsonl")
    run = atomic.read_jsonl(tmp_path / "run" / "pretrain" / "metrics.jsonl")
    assert len(ref) == len(run) == 3
    for r, q in zip(ref, run):
        assert [r[k] for k in keys[:3]] == [q[k] for k in keys[:3]]
        np.testing.assert_allclose([r[k] for k in keys[3:]], [q[k] for k in keys[3:]], rtol=1e-5)
    # A finished stack is kept, not retrained.
    logs = []
    pretraining.pretrain(config, images, images[:64], tmp_path / "run", log=logs.append)
    assert sum("finished earlier" in m for m in logs) == 2
    loaded = pretraining.from_workdir(tmp_path / "run", config, 1)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(loaded),
                 models.params_of(resumed))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, images):
    """The stacks of compare seeds 0 and 1 (one epoch per layer), trained one after another
    into one workdir: (workdir, [stack of seed 0, stack of seed 1])."""
    w = tmp_path_factory.mktemp("sequential")
    config = _config(epochs=(1, 1))
    return w, [pretraining.pretrain(config, images, images[:64], w, log=_quiet, seed_index=i)
               for i in (0, 1)]


def test_per_seed_stacks_differ_and_are_reproducible(tmp_path, images, sequential):
    w, (zero, one) = sequential
    again = pretraining.pretrain(_config(epochs=(1, 1)), images, images[:64], tmp_path, log=_quiet,
                           seed_index=1)
    jax.tree.map(np.testing.assert_array_equal, models.params_of(one), models.params_of(again))
    assert not np.allclose(one.layers[0].w[...], zero.layers[0].w[...])
    assert (w / "pretrain" / "seed1" / "metrics.jsonl").is_file()
    assert (w / "pretrain" / "metrics.jsonl").is_file()


def _assert_close(a: stack.Stack, b: stack.Stack) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                 models.params_of(a), models.params_of(b))


def _metrics(workdir, i):
    return atomic.read_jsonl(pretraining.pretrain_dir(workdir, i) / "metrics.jsonl")


def test_stacks_trained_together_are_the_ones_trained_one_after_another(tmp_path, images,
                                                                        sequential):
    w_seq, seq = sequential
    # Layer 2 re-encodes its inputs, each seed through its own layer 1.
    config = _config(epochs=(1, 1), cache_features="never")
    logs = []
    together = pretraining.pretrain_seeds(config, images, images[:64], tmp_path, [0, 1],
                                    log=logs.append)
    assert any("layer 2, stacks of seeds 0, 1 together" in m for m in logs), logs
    for a, b in zip(seq, together):
        _assert_close(a, b)
    for k in (0, 1):
        assert not np.allclose(together[0].layers[k].w[...], together[1].layers[k].w[...])
    # Each seed's records are its own: its train and validation losses, as one stack at a time.
    got = [_metrics(tmp_path, i) for i in (0, 1)]
    for i in (0, 1):
        ref = _metrics(w_seq, i)
        assert [(r["layer"], r["epoch"], r["step"], r["settings"]) for r in got[i]] == \
            [(r["layer"], r["epoch"], r["step"], r["settings"]) for r in ref]
        for key in ("train_mse", "val_mse"):
            np.testing.assert_allclose([r[key] for r in got[i]], [r[key] for r in ref],
                                       rtol=1e-4)
        assert all(r["seeds_together"] == 2 for r in got[i])
    for key in ("train_mse", "val_mse"):
        assert all(a[key] != b[key] for a, b in zip(*got))
    # The layout readers know: per-seed checkpoints, nothing left of the joint phase.
    assert not (tmp_path / "pretrain" / pretraining.SEEDS_CKPT).exists()
    jax.tree.map(np.testing.assert_array_equal,
                 models.params_of(pretraining.from_workdir(tmp_path, config, 1)),
                 models.params_of(together[0]))
    logs = []
    reread = pretraining.pretrain(config, images, images[:64], tmp_path, log=logs.append,
                            seed_index=1)
    assert sum("finished earlier" in m for m in logs) == 2, logs
    jax.tree.map(np.testing.assert_array_equal, models.params_of(reread),
                 models.params_of(together[1]))
    # Its optimiser state is the one a stack trained alone saves, so that training on resumes.
    layer = together[1].layers[1]
    tx = optim.make(config.pretrain, 6)
    # Every finished layer is saved as a phase of its own seed: a leading seed axis of 1.
    one = jax.tree.map(lambda a: a[None], models.params_of(layer))
    like = {"params": one, "opt_state": jax.vmap(tx.init)(one)}
    ckpts = checkpoint.Checkpoints(pretraining.ckpt_dir(tmp_path, 2, 1))
    try:
        state, record = ckpts.restore(6, like)
    finally:
        ckpts.close()
    assert record["finished"] and record["seeds_together"] == [0, 1]
    counts = [int(c[0]) for c in jax.tree.leaves(state["opt_state"]) if np.shape(c) == (1,)]
    assert counts and all(c == 6 for c in counts)


def test_a_killed_joint_layer_resumes_and_finished_layers_are_kept(tmp_path, images,
                                                                   sequential, monkeypatch):
    w_seq, seq = sequential
    config = _config(epochs=(1, 1), cache_features="always")  # layer 2 on cached inputs
    # Seed 1's layer 1 was finished by an earlier run of its stack alone.
    kept = pretraining.ckpt_dir(tmp_path, 1, 1)
    shutil.copytree(pretraining.ckpt_dir(w_seq, 1, 1), kept)
    saved_dirs = []
    real_save = checkpoint.Checkpoints.save

    def save_then_die(self, step, state, record):
        real_save(self, step, state, record)
        saved_dirs.append(self.directory)
        if self.directory.parent.name == pretraining.SEEDS_CKPT:  # the joint layer 2, mid-epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain_seeds(config, images, images[:64], tmp_path, [0, 1], log=_quiet)
    monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
    assert saved_dirs[-1].name == "layer2_s0-1" and kept.absolute() not in saved_dirs
    logs = []
    resumed = pretraining.pretrain_seeds(config, images, images[:64], tmp_path, [0, 1],
                                   log=logs.append)
    assert "stack of seed 1, layer 1: finished earlier (6 steps), kept" in logs, logs
    assert "layer 2 x2 seeds: resuming at step 3/6" in logs, logs
    jax.tree.map(np.testing.assert_array_equal, models.params_of(resumed[1].layers[0]),
                 models.params_of(seq[1].layers[0]))
    for a, b in zip(seq, resumed):
        _assert_close(a, b)
    assert "seeds_together" not in _metrics(tmp_path, 1)[0]  # the kept layer's own record


def test_out_of_memory_trains_the_stacks_one_after_another(tmp_path, images, monkeypatch):
    def out_of_memory(*args):
        jax.numpy.zeros((2**42,), jax.numpy.float32).block_until_ready()

    calls = []
    together = pretraining._pretrain

    def pretrain(config, images, val, workdir, seeds, log):
        if len(seeds) > 1:
            return together(config, images, val, workdir, seeds, log)
        calls.append(seeds)
        return [None]

    monkeypatch.setattr(pretraining, "_train_layer", out_of_memory)
    monkeypatch.setattr(pretraining, "_pretrain", pretrain)
    logs = []
    pretraining.pretrain_seeds(_config(), images, images[:64], tmp_path, [0, 1], log=logs.append)
    assert calls == [[0], [1]]
    assert logs[-1] == ("the stacks of seeds 0, 1 do not fit in memory together; training "
                        "them one after another")
    monkeypatch.setattr(pretraining, "_pretrain", together)
    monkeypatch.setattr(pretraining, "_train_layer", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # any other error is not a reason to fall back
        pretraining.pretrain_seeds(_config(), images, images[:64], tmp_path, [0, 1], log=_quiet)


def test_cached_inputs_of_all_seeds_are_bounded(images, monkeypatch):
    s = stack.Stack(stack.layer_specs(_config(), 1), (2, 2), rngs=nnx.Rngs(0))
    groups = lambda setting: pretraining._seed_groups(setting, s, 2, images, [0, 1, 2], _quiet)
    assert pretraining.cache_budget() > 0
    assert groups("always") == [[0, 1, 2]] and groups("never") == [[0, 1, 2]]
    one_seed = images.shape[0] * 12 * 12 * 6 * 4  # layer 2's float32 inputs of one seed
    monkeypatch.setattr(pretraining, "cache_budget", lambda: 2 * one_seed)
    assert groups("always") == [[0, 1], [2]]
    assert groups("never") == [[0, 1, 2]]  # re-encoded inputs cost no memory per seed
    monkeypatch.setattr(pretraining, "cache_budget", lambda: one_seed - 1)
    assert groups("always") == [[0], [1], [2]]  # one seed at least, as trained alone


# --- Stack.save: replaces a saved stack, never anything else ----------------------------------


def _small_stack(seed: int = 0) -> stack.Stack:
    return stack.Stack(stack.layer_specs(_config(), 1), (2, 2), rngs=nnx.Rngs(seed))


def _tree(folder):
    """Every path under ``folder`` with its bytes (None for a folder): what a refusal keeps."""
    return {p.relative_to(folder): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", ["folder", "file", "workdir"])
def test_save_refuses_a_path_that_is_not_a_saved_stack(tmp_path, case):
    target = tmp_path / "thesis"
    if case == "file":
        target.write_text("chapter 1")
        fragment = "is a file"
    else:
        target.mkdir()
        (target / "chapter1.tex").write_text("years of work")
        fragment = "is a folder without stack.json and params/"
        if case == "workdir":
            (target / "config.json").write_text("{}")
            (target / "pretrain").mkdir()
            fragment = "is a workdir"
    before = _tree(tmp_path)
    with pytest.raises(InputError) as e:
        _small_stack().save(target)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{target}: "), message
    assert fragment in message and "not a saved stack" in message, message
    assert f"e.g. {tmp_path / 'thesis-stack'}" in message, message  # another path to use
    assert _tree(tmp_path) == before  # nothing written, nothing deleted


def test_save_replaces_a_saved_stack_or_an_empty_folder(tmp_path):
    a, b = _small_stack(1), _small_stack(2)
    (tmp_path / "s").mkdir()  # made to save into: nothing to lose
    a.save(tmp_path / "s")
    (tmp_path / "s" / "config.json").write_text("{}")  # as a published stack has
    b.save(tmp_path / "s")
    jax.tree.map(np.testing.assert_array_equal, models.params_of(b),
                 models.params_of(stack.Stack.load(tmp_path / "s")))
    # A save killed between its two renames left the old stack aside and none at the path.
    a.save(tmp_path / "t")
    (tmp_path / "t").rename(tmp_path / ".t.old")
    b.save(tmp_path / "t")
    jax.tree.map(np.testing.assert_array_equal, models.params_of(b),
                 models.params_of(stack.Stack.load(tmp_path / "t")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "t"]  # no leftovers


def test_save_under_a_file_is_an_input_error_naming_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "runs" / "stack"
    with pytest.raises(InputError) as e:
        _small_stack().save(target)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{target}: "), message
    assert f"lies under {tmp_path / 'notes.txt'}, which is a file" in message, message
    assert ".saving" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("fault", ["read_only", "disk_full", "last_rename"])
def test_a_refused_save_is_a_write_error_naming_the_path_and_keeps_the_old_stack(
        tmp_path, monkeypatch, fault):
    old, new = _small_stack(1), _small_stack(2)
    target = tmp_path / "s"
    old.save(target)
    if fault == "read_only":  # root writes anywhere: the file system's refusal is injected
        real_mkdir = stack.Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self.name.endswith(".saving"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(stack.Path, "mkdir", mkdir)
        cause = "read-only file system"
    elif fault == "disk_full":  # as tensorstore words it, under orbax, with no errno
        def full(self, directory, *args, **kwargs):
            raise RuntimeError(f"Error writing \"{directory}/d/0\" [os_error_code='28']")

        monkeypatch.setattr(stack.ocp.StandardCheckpointer, "save", full)
        cause = "no space left on device"
    else:  # the new stack is written, the old one moved aside, then the rename is refused
        real_replace = os.replace

        def replace(src, dst):
            if str(src).endswith(".saving"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
            return real_replace(src, dst)

        monkeypatch.setattr(stack.os, "replace", replace)
        cause = "permission denied"
    with pytest.raises(WriteError) as e:
        new.save(target)
    message = str(e.value)
    assert e.value.path == str(target) and f"cannot write {target}: {cause}" in message, message
    assert ".saving" not in message and "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary folder left
    jax.tree.map(np.testing.assert_array_equal, models.params_of(old),
                 models.params_of(stack.Stack.load(target)))


# --- project_filters, and encoding in batches -------------------------------------------------


@pytest.mark.parametrize("k", [0, 3, -1, True])
def test_project_filters_refuses_a_layer_outside_the_stack(k):
    s = _small_stack()
    with pytest.raises(InputError, match=r"^project_filters\(.*\): expected a layer number in "
                                         r"1\.\.2$"):
        s.project_filters(k)
    assert s.project_filters(2).shape == (6, 10, 10, 1)


def test_no_images_encode_and_reconstruct_to_empty_arrays_of_their_shape(images):
    s = _small_stack()
    for depth, pooled in ((1, True), (2, False)):
        one, none = s.encode(images[:1], depth, pooled), s.encode(images[:0], depth, pooled)
        assert none.shape == (0, *one.shape[1:]) and none.dtype == one.dtype == np.float32
    assert s.reconstruct(images[:0]).shape == (0, 28, 28, 1)
    # Every caller of map_batches: a per-image value of no images is (0,), of fn's dtype.
    errors = driver.map_batches(jax.jit(lambda x: jax.numpy.sum(x, axis=(1, 2, 3)) > 0),
                                np.zeros((0, 28, 28, 1), np.float32), 16)
    assert errors.shape == (0,) and errors.dtype == bool


def test_map_batches_calls_fn_on_whole_batches_only():
    shapes = []

    def fn(x):
        shapes.append(x.shape)
        return x[:, 0] * 2

    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    np.testing.assert_array_equal(driver.map_batches(fn, x, 4), x[:, 0] * 2)
    np.testing.assert_array_equal(driver.map_batches(fn, x[:1], 4), x[:1, 0] * 2)
    assert set(shapes) == {(4, 3)}  # one program: the tail and a short input are padded
    with pytest.raises(InputError, match="batch_size 0: expected a positive"):
        driver.map_batches(fn, x, 0)


def test_encode_does_not_depend_on_how_many_images_come_together():
    """On the published MNIST stack, XLA's CPU convolutions round differently for a batch of
    one image than for hundreds (2e-6): each call is padded to the batch size."""
    if not (api.RESULTS / api.PUBLISHED["mnist"] / "stack.json").is_file():
        pytest.skip("no published mnist stack")
    s = scae.load_stack("mnist")
    x = np.load(importlib.resources.files("scae") / "assets" / "mnist.npz")["train_images"][:300]
    every = s.encode(x)
    np.testing.assert_array_equal(s.encode(x[:1])[0], every[0])
    np.testing.assert_array_equal(s.encode(x[:5]), every[:5])
    np.testing.assert_array_equal(s.encode(x[256:]), every[256:])  # a tail, alone
    # Another batch size is another program, which XLA may compute with another algorithm:
    # equal within float rounding, and at that size equal whatever the number of images.
    sevens = s.encode(x[:21], batch_size=7)
    np.testing.assert_allclose(sevens, every[:21], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(s.encode(x[:1], batch_size=7)[0], sevens[0])
