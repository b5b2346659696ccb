"""What users run, run for real: a Winograd-sized command with each conv_impl, vmapped seeds
through the fine-tuning cell and the stacks, the best-epoch record of a real cell, the filter
experiment's variants, the backend the suite runs on, and the helper scripts' imports.

The smoke preset has 8 maps, below ops.WINOGRAD_MIN_MAPS, so the other command-level tests go
through patches x matmul; seed_batching 'auto' means 'map' on the CPU, so the other seed tests
never vmap a real phase. These use a layer of 5x5 kernels over 16 maps (Winograd's custom VJPs)
and name the seed batching.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import PLATFORMS, two_layer_config
from flax import nnx

import configs.filters_mnist
import configs.mnist
from scae import atomic
from scae.data import inputs
from scae.models import modules as models
from scae.models import ops, winograd
from scae.models import stack as stack_lib
from scae.study import filters as filter_experiment
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining
from scae.train import driver

ROOT = Path(__file__).resolve().parents[1]


def _quiet(_):
    pass


def _takes_winograd(w_shape) -> bool:
    """Whether a convolution with kernel ``w_shape`` (k, k, in, out) runs by Winograd under
    conv_impl 'winograd' (the rule of scae.models.ops)."""
    return (w_shape[0] in ops.WINOGRAD_KERNELS and w_shape[2] >= ops.WINOGRAD_MIN_MAPS
            and winograd.supports(w_shape))


# --- a Winograd-sized configuration through the command --------------------------------------

WINOGRAD_FLAGS = ("--config=configs/mnist.py:smoke", "--config.model.features=(16,16,16)",
                  "--config.compare.arms=('pretrained',)", "--config.compare.num_seeds=1",
                  "--config.tensorboard=False")


@pytest.mark.heavy
@pytest.mark.slow
def test_a_winograd_sized_compare_agrees_with_xla(tmp_path):
    """``python -m pipelines.compare`` on the smoke preset with 16 maps (conv 2: 5x5 over 16
    maps, Winograd in the CAE's pass and the CNN's conv-pool), once with conv_impl=winograd and
    once with xla: both exit 0 and their records agree to float rounding. (A few steps: the
    time is compilation, about 30 s for xla and 90 s for winograd on a loaded 2-core machine.)"""
    c = configs.mnist.get_config("smoke")
    assert _takes_winograd((c.model.kernel_sizes[1], c.model.kernel_sizes[1], 16, 16))
    records = {}
    for impl in ("winograd", "xla"):
        w = tmp_path / impl
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.compare", *WINOGRAD_FLAGS, f"--workdir={w}",
             f"--config.model.conv_impl={impl}"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS=PLATFORMS),
            capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        config = json.loads((w / "config.json").read_text())
        assert config["model"]["conv_impl"] == impl and config["model"]["features"] == [16] * 3
        records[impl] = (atomic.read_jsonl(w / "pretrain" / "metrics.jsonl"),
                         atomic.read_jsonl(w / "compare" / "runs.jsonl"))
    (pre_w, runs_w), (pre_x, runs_x) = records["winograd"], records["xla"]
    assert [(r["layer"], r["epoch"], r["step"]) for r in pre_w] == \
        [(r["layer"], r["epoch"], r["step"]) for r in pre_x] and len(pre_w) == 3
    for key in ("train_mse", "val_mse"):
        np.testing.assert_allclose([r[key] for r in pre_w], [r[key] for r in pre_x], rtol=1e-4,
                                   err_msg=key)
    assert [(r["arm"], r["seed"]) for r in runs_w] == [(r["arm"], r["seed"]) for r in runs_x]
    assert runs_w
    for a, b in zip(runs_w, runs_x):
        # Errors count images: rounding may at most move one borderline image.
        one_val, one_test = 100 / c.data.validation_size, 100 / a["test_size"]
        assert a["best_epoch"] == b["best_epoch"]
        np.testing.assert_allclose([e for _, e in a["curve"]], [e for _, e in b["curve"]],
                                   atol=one_val + 1e-4)
        assert abs(a["val_error"] - b["val_error"]) <= one_val + 1e-4
        assert abs(a["test_error"] - b["test_error"]) <= one_test + 1e-4


# --- a real fine-tuning cell, seeds mapped and vmapped ---------------------------------------

CELL_SEEDS, CELL_LABELS = (0, 1, 2), 20


def _cell_config(npz: Path, batching: str) -> ml_collections.ConfigDict:
    """The MNIST smoke config shrunk to two conv layers, the second 5x5 over 16 maps (Winograd),
    fine-tuned 8 short epochs at a constant rate, evaluated after each: enough ups and downs
    of the validation error that the best epoch is not always the last."""
    c = configs.mnist.get_config("smoke")
    c.data.source = f"npz:{npz}"
    # As many validation as test images: one evaluation program serves both.
    c.data.validation_size, c.data.test_size, c.data.pretrain_size = 50, 0, 0
    c.model.features, c.model.kernel_sizes, c.model.pool_sizes = (16, 4), (5, 5), (2, 2)
    c.model.fc_width = 8
    c.model.conv_impl = "winograd"
    c.pretrain.layers, c.pretrain.sparsity_pool, c.pretrain.epochs = 2, (2, 2), (1, 1)
    c.finetune.epochs = c.finetune.evals = 8
    c.finetune.batch_size, c.finetune.steps_per_call = 10, 2
    c.finetune.learning_rate, c.finetune.schedule = 0.1, "constant"
    c.compare.seed_batching = batching
    c.tensorboard = False
    return c


@pytest.fixture(scope="module")
def cells(tiny_npz_module, tmp_path_factory):
    """The 'pretrained' cell of three seeds trained with seed_batching 'map' and 'vmap':
    {mode: (config, data, rows, best parameters, last parameters)}. The last parameters are
    the trained state's, taken from the phase's result (driver.train is wrapped, not changed)."""
    out = {}
    real_train = driver.train
    for mode in ("map", "vmap"):
        c = _cell_config(tiny_npz_module, mode)
        data = inputs.build(c.data, c.seed)
        stack = stack_lib.Stack(stack_lib.layer_specs(c, 1), c.model.pool_sizes,
                                rngs=nnx.Rngs(10))
        results = []

        def spy(phase, results=results):
            results.append(real_train(phase))
            return results[-1]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(driver, "train", spy)
            rows, best = finetuning.run_cell(c, data, stack, CELL_LABELS, "pretrained",
                                             list(CELL_SEEDS),
                                             tmp_path_factory.mktemp(f"cell_{mode}"), log=_quiet)
        (result,) = results
        out[mode] = (c, data, rows, best, jax.tree.map(np.asarray, result.state["params"]))
    return out


def test_a_vmapped_cell_equals_the_mapped_one(cells):
    """run_cell with seed_batching 'vmap' (every seed in one vmapped program, Winograd's custom
    VJPs under vmap) gives the records and parameters of 'map' (to float rounding)."""
    assert driver.resolve_seed_batching("vmap") == "vmap"
    c, _, rows_m, best_m, last_m = cells["map"]
    _, _, rows_v, best_v, last_v = cells["vmap"]
    assert _takes_winograd(best_m["conv2"]["w"].shape[1:])
    for a, b in zip(rows_m, rows_v, strict=True):
        assert (a["seed"], a["best_epoch"], a["steps"]) == (b["seed"], b["best_epoch"], b["steps"])
        np.testing.assert_allclose([e for _, e in a["curve"]], [e for _, e in b["curve"]],
                                   atol=1e-4)
        np.testing.assert_allclose([a["val_error"], a["test_error"]],
                                   [b["val_error"], b["test_error"]], atol=1e-4)
    for got, want in ((best_v, best_m), (last_v, last_m)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                     got, want)
    # The seeds trained apart.
    assert not np.allclose(last_m["conv2"]["w"][0], last_m["conv2"]["w"][1])


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_the_record_is_the_best_epoch_and_its_parameters(cells, mode):
    """Each record's val_error is the least of its curve, best_epoch its first argmin, and
    val_error and test_error are the errors of the returned (best) parameters, recomputed from
    them. At least one seed's last parameters are worse on validation than its best and have
    another test error: a cell that reported (or tested) the last parameters would fail here."""
    c, data, rows, best, last = cells[mode]
    spec = models.CNNSpec.from_config(c.model, data.image_shape)
    graphdef, _ = models.split(models.CNN(spec, rngs=nnx.Rngs(0)))
    errors = jax.jit(finetuning.error_fn(graphdef))
    seed = lambda tree, i: jax.tree.map(lambda a: jnp.asarray(a[i]), tree)
    test_y, val_y = jnp.asarray(data.test_labels), jnp.asarray(data.val_labels)
    moved = 0
    for i, r in enumerate(rows):
        curve = [e for _, e in r["curve"]]
        assert [ep for ep, _ in r["curve"]] == list(range(1, r["epochs"] + 1))
        assert r["val_error"] == min(curve)
        assert r["best_epoch"] == r["curve"][int(np.argmin(curve))][0]
        np.testing.assert_allclose(float(errors(seed(best, i), data.val_images, val_y)),
                                   r["val_error"], atol=1e-4)
        test_best = float(errors(seed(best, i), data.test_images, test_y))
        np.testing.assert_allclose(test_best, r["test_error"], atol=1e-4)
        # The last parameters: worse on validation than the best, and other on test.
        val_last = float(errors(seed(last, i), data.val_images, val_y))
        test_last = float(errors(seed(last, i), data.test_images, test_y))
        np.testing.assert_allclose(val_last, curve[-1], atol=1e-4)
        if val_last > r["val_error"] + 1e-4 and not math.isclose(test_last, test_best):
            moved += 1
    assert moved, [(r["best_epoch"], r["curve"]) for r in rows]


# --- the stacks, seeds mapped and vmapped ----------------------------------------------------


def test_vmapped_stacks_equal_mapped_ones(tmp_path):
    """pretrain_seeds with seed_batching 'vmap' trains the stacks of two seeds as 'map' does
    (to float rounding), layer 2 being 5x5 over 16 maps: Winograd's tied sparse pass and its
    custom VJPs under vmap, with masking noise keyed per seed."""
    x = np.load(ROOT / "scae" / "assets" / "mnist.npz")["train_images"][:64]
    images = jnp.asarray(x[..., None] / 255.0, jnp.float32)
    out = {}
    for mode in ("map", "vmap"):
        c = two_layer_config(epochs=(1, 1), noise="mask", noise_level=0.2, batch_size=16,
                             steps_per_call=4, checkpoint_every_steps=4)
        c.model.features, c.model.kernel_sizes = (16, 4), (5, 5)
        c.model.conv_impl = "winograd"
        c.compare.seed_batching = mode
        c.tensorboard = False
        stacks = pretraining.pretrain_seeds(c, images, images[:32], tmp_path / mode, [0, 1],
                                            log=_quiet)
        out[mode] = ([models.params_of(s) for s in stacks],
                     [atomic.read_jsonl(pretraining.pretrain_dir(tmp_path / mode, i)
                                        / "metrics.jsonl") for i in (0, 1)])
    assert _takes_winograd(out["map"][0][0]["layers"][1]["w"].shape)
    (p_map, m_map), (p_vmap, m_vmap) = out["map"], out["vmap"]
    for a, b in zip(p_map, p_vmap):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
    for a, b in zip(m_map, m_vmap):
        assert [(r["layer"], r["step"]) for r in a] == [(r["layer"], r["step"]) for r in b]
        for key in ("train_mse", "val_mse"):
            np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-4)
    assert not np.allclose(p_map[0]["layers"][1]["w"], p_map[1]["layers"][1]["w"])


# --- the filter experiment's variants --------------------------------------------------------


def test_filter_variants_train_with_their_noise_and_pooling(tmp_path):
    """configs/filters_mnist.py:smoke through scae.study.filters.run: each variant trains with
    its own noise and sparsity pooling. Every variant starts from the same initialisation and
    sees the same batches, so a variant whose noise or pooling were ignored would train the
    plain variant's filters, to the bit."""
    config = configs.filters_mnist.get_config("smoke")
    config.tensorboard = False
    names = ("plain", "noise", "pool")
    config.variants = ml_collections.ConfigDict({n: config.variants[n].to_dict() for n in names})
    want = {"plain": ("none", 0.0, (1,)), "noise": ("mask", 0.5, (1,)),
            "pool": ("none", 0.0, (2,))}
    for name, (noise, level, pool) in want.items():
        v = filter_experiment.variant_config(config, name).pretrain
        assert (v.noise, v.noise_level, tuple(v.sparsity_pool)) == (noise, level, pool), name
    data = inputs.build(config.data, config.seed)
    path = filter_experiment.run(config, data, tmp_path, log=_quiet)
    assert path.read_bytes()[:4] == b"\x89PNG"
    filters, mse = {}, {}
    for name in names:
        c = filter_experiment.variant_config(config, name)
        stack = pretraining.from_workdir(tmp_path / name, c, 1)
        spec = stack.layers[0].spec
        assert (spec.noise, spec.noise_level, spec.sparsity_pool) == (want[name][0],
                                                                      want[name][1],
                                                                      want[name][2][0])
        filters[name] = np.asarray(stack.layers[0].w[...])
        mse[name] = [r["val_mse"] for r in
                     atomic.read_jsonl(tmp_path / name / "pretrain" / "metrics.jsonl")]
    for other in ("noise", "pool"):
        assert not np.allclose(filters[other], filters["plain"], rtol=0, atol=1e-6), other
        assert mse[other] != mse["plain"], other


# --- the backend the suite runs on -----------------------------------------------------------


def test_the_in_process_backend_is_pinned():
    """tests/conftest.py pins the in-process backend (and the commands' JAX_PLATFORMS) to the
    CPU unless SCAE_TEST_PLATFORMS names another."""
    assert os.environ["JAX_PLATFORMS"] == PLATFORMS
    assert PLATFORMS == os.environ.get("SCAE_TEST_PLATFORMS", "cpu")
    if PLATFORMS == "cpu":
        assert jax.default_backend() == "cpu"


def test_cpu_only_tests_skip_on_another_backend(monkeypatch):
    import conftest

    marked = SimpleNamespace(get_closest_marker=lambda name: object() if name == "cpu_only"
                             else None)
    unmarked = SimpleNamespace(get_closest_marker=lambda name: None)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(pytest.skip.Exception, match="CPU backend"):
        conftest.pytest_runtest_setup(marked)
    conftest.pytest_runtest_setup(unmarked)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    conftest.pytest_runtest_setup(marked)


# --- the helper scripts import the checkout they run from -----------------------------------


@pytest.mark.parametrize("helper,args", [
    ("kill_at.py", ["open", "^never-matches$", "1", "scae.probe"]),
    ("one_step.py", ["unused.npz"]),
    ("seed_spread.py", ["unused.npz", "auto"]),
])
def test_helper_scripts_import_their_own_checkout(tmp_path, helper, args):
    """A helper run as a file from another checkout (no PYTHONPATH, another working folder)
    imports that checkout's scae, not the one an editable install points at."""
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / helper, checkout / "tests" / helper)
    (checkout / "scae").mkdir()
    (checkout / "scae" / "__init__.py").write_text(
        "import sys\nprint('scae from', __file__)\nsys.stdout.flush()\nraise SystemExit(0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(checkout / "tests" / helper), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"scae from {checkout / 'scae' / '__init__.py'}" in proc.stdout, proc.stdout
