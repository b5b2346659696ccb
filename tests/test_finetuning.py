"""Fine-tuning: weight transfer, the frozen arm, fair arms and vmapped seeds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.mnist
from scae.data import inputs
from scae.errors import InputError
from scae.models import modules as models
from scae.models import stack
from scae.study import finetune as finetuning
from scae.study import pretrain as pretraining


@pytest.fixture(scope="module")
def setup(tiny_npz_module):
    c = configs.mnist.get_config("smoke")
    c.data.source = f"npz:{tiny_npz_module}"
    c.data.validation_size = 60
    c.data.test_size = 0
    c.data.pretrain_size = 0
    c.model.features = (4, 6, 8)
    c.model.fc_width = 12
    c.finetune.epochs = 3
    c.finetune.evals = 3
    c.finetune.batch_size = 10
    c.finetune.steps_per_call = 2
    data = inputs.build(c.data, c.seed)
    s = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(10))
    return c, data, s


def test_transfer_copies_kernels_and_biases_and_leaves_the_head_random(setup):
    c, data, s = setup
    spec = models.CNNSpec.from_config(c.model, data.image_shape)
    fresh = models.params_of(models.CNN(spec, rngs=nnx.Rngs(0)))
    logs = []
    out = models.params_of(s.to_cnn(spec, rngs=nnx.Rngs(0), log=logs.append))
    params = models.params_of(s)["layers"]
    for k in range(1, 4):
        np.testing.assert_array_equal(out[f"conv{k}"]["w"], params[k - 1]["w"])
        np.testing.assert_array_equal(out[f"conv{k}"]["b"], params[k - 1]["b"])
    for name in ("fc", "out"):
        for leaf in ("w", "b"):
            np.testing.assert_array_equal(out[name][leaf], fresh[name][leaf])
    fresh_part = logs[0].split("fresh initialisation kept for")[1]
    assert "fc.w" in fresh_part and "out.b" in fresh_part and "conv1" not in fresh_part
    assert "layer1.w->conv1.w" in logs[0]
    bad = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(10))
    bad.layers[0].w = nnx.Param(jnp.zeros((3, 3, 1, 4)))
    with pytest.raises(InputError, match="conv1.w"):
        bad.to_cnn(spec, rngs=nnx.Rngs(0), log=lambda _: None)


def test_arms_share_subsets_and_the_frozen_arm_keeps_its_conv_weights(setup, tmp_path):
    c, data, params = setup
    out = {}
    for arm in ("random", "pretrained", "frozen"):
        out[arm] = finetuning.run_cell(c, data, params, 40, arm, [0, 1], tmp_path / arm,
                                     log=lambda _: None)
    digests = {arm: [r["subset"] for r in rows] for arm, (rows, _) in out.items()}
    assert digests["random"] == digests["pretrained"] == digests["frozen"]
    assert digests["random"][0] != digests["random"][1]
    _, best = out["frozen"]
    for k, p in enumerate(models.params_of(params)["layers"].values(), start=1):
        for seed in range(2):
            np.testing.assert_array_equal(best[f"conv{k}"]["w"][seed], p["w"])
    # The head did train, and the pretrained arm moved its conv weights.
    spec = models.CNNSpec.from_config(c.model, data.image_shape)
    fresh = models.params_of(finetuning.initial_model(spec, params, "frozen",
                                                    finetuning.seed_keys(c.seed, 0)[0],
                                                    log=lambda _: None))
    np.testing.assert_array_equal(best["conv1"]["w"][0], fresh["conv1"]["w"])
    assert not np.allclose(best["fc"]["w"][0], fresh["fc"]["w"])
    assert not np.allclose(out["pretrained"][1]["conv1"]["w"][0], params.layers[0].w[...])
    for rows, _ in out.values():
        for r in rows:
            assert 0 <= r["test_error"] <= 100 and 1 <= r["best_epoch"] <= r["epochs"]
            assert len(r["curve"]) == 3
            # The diagnostics: each conv layer's starting RMS against the random
            # initialiser's, and the training loss at the first evaluation.
            assert len(r["conv_rms"]) == len(r["conv_rms_random"]) == 3
            # ... each hidden layer's saturated units at the start and at the first
            # evaluation, and the largest gradient norm until then and over the run.
            assert len(r["saturated_start"]) == len(r["first_eval_saturated"]) == 4
            assert all(0 <= f <= 1 for f in r["saturated_start"] + r["first_eval_saturated"])
            assert 0 < r["first_eval_max_grad_norm"] <= r["max_grad_norm"] < math.inf
            assert math.isfinite(r["first_eval_train_loss"]) and r["failure_rule"] == "mark"
            assert r["failed"] == finetuning.hit_failure_rule(r["first_eval_train_loss"], 10)
    random_rows, pretrained_rows = out["random"][0], out["pretrained"][0]
    assert random_rows[0]["conv_rms"] == random_rows[0]["conv_rms_random"]
    assert pretrained_rows[0]["conv_rms"] != pretrained_rows[0]["conv_rms_random"]


def test_vmapped_seeds_equal_sequential_runs(setup, tmp_path):
    c, data, params = setup
    together, best = finetuning.run_cell(c, data, params, 40, "pretrained", [0, 1],
                                       tmp_path / "v", log=lambda _: None)
    for i, seed in enumerate([0, 1]):
        (alone,), best1 = finetuning.run_cell(c, data, params, 40, "pretrained", [seed],
                                            tmp_path / f"s{seed}", log=lambda _: None)
        np.testing.assert_allclose([p[1] for p in alone["curve"]],
                                   [p[1] for p in together[i]["curve"]], atol=1e-4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], rtol=1e-4, atol=1e-5),
                     best, best1)


def test_augmentation_and_dropout_keys_are_the_same_in_every_arm(setup, tmp_path, monkeypatch):
    from scae.train import driver

    c, data, params = setup
    phases = {}
    real_train = driver.train

    def spy(phase):
        phases[phase.name.split()[0]] = phase
        return real_train(phase)

    monkeypatch.setattr(driver, "train", spy)
    c2 = c.copy_and_resolve_references()
    c2.finetune.augment_translate = 2
    c2.finetune.augment_flip = True
    c2.model.dropout = 0.25
    for arm in ("random", "pretrained"):
        finetuning.run_cell(c2, data, params, 40, arm, [0, 1], tmp_path / arm, log=lambda _: None)
    a, b = phases["random"], phases["pretrained"]
    np.testing.assert_array_equal(a.step_key, b.step_key)
    np.testing.assert_array_equal(a.order_key, b.order_key)
    assert not np.array_equal(a.step_key[0], a.step_key[1])  # but each seed has its own
    # The loss really augments: the same key gives the same loss, another key another one.
    q = jax.tree.map(lambda x: x[0], a.params)
    batch = (data.train_images[:8], jnp.asarray(data.train_labels[:8]))
    key = jax.random.fold_in(a.step_key[0], 5)
    assert float(a.loss_fn(q, batch, key)) == float(b.loss_fn(q, batch, key))
    assert float(a.loss_fn(q, batch, key)) != float(a.loss_fn(q, batch, jax.random.fold_in(key, 1)))


def test_refit_trains_on_validation_images_too_and_selects_nothing(setup, tmp_path):
    c, data, params = setup
    c2 = c.copy_and_resolve_references()
    c2.finetune.refit_full = True
    pool = data.train_images.shape[0]
    rows, _ = finetuning.run_cell(c2, data, None, pool, "random", [0], tmp_path / "refit",
                                  log=lambda _: None)
    (r,) = rows
    assert r["refit_full"] and r["train_size"] == pool + data.val_images.shape[0]
    assert np.isnan(r["val_error"]) and r["best_epoch"] == r["epochs"]
    assert [e for e, _ in r["curve"]] == [r["epochs"]]
    # A smaller label size is not the full cell: it selects on validation as usual.
    rows, _ = finetuning.run_cell(c2, data, None, 40, "random", [0], tmp_path / "small",
                                  log=lambda _: None)
    assert not rows[0]["refit_full"] and not np.isnan(rows[0]["val_error"])


def test_the_reported_model_is_the_one_of_lowest_validation_error():
    """keep_best on a hand-made trace: per seed, the parameters and epoch of the lowest
    validation error are kept, whatever comes later (the test error is measured on them)."""
    n = 2
    state = {"params": {"w": jnp.zeros((n, 3))}, "best": {"w": jnp.full((n, 3), -1.0)},
             "best_val": jnp.full((n,), jnp.inf), "best_epoch": jnp.zeros((n,), jnp.int32)}
    trace = [(1, [5.0, 9.0]), (2, [3.0, 8.0]), (3, [4.0, 7.0]), (4, [3.0, 7.5])]
    for epoch, errs in trace:
        state = dict(state, params={"w": jnp.full((n, 3), float(epoch))})
        state = finetuning.keep_best(state, jnp.asarray(errs), epoch)
    np.testing.assert_array_equal(state["best_epoch"], [2, 3])  # a tie does not replace
    np.testing.assert_array_equal(state["best_val"], [3.0, 7.0])
    np.testing.assert_array_equal(state["best"]["w"][:, 0], [2.0, 3.0])


# The fields of a run record, whichever way its seeds and their stacks were trained.
RUN_FIELDS = {"arm", "best_epoch", "cell_time_s", "curve", "data_exact", "data_fingerprint",
              "data_note", "data_title", "dataset", "epochs", "label_size", "lr_scale",
              "paper_key", "pool_size", "refit_full", "seed", "seeds_together", "settings",
              "stack_seed", "steps", "subset", "test_error", "train_size", "val_error",
              "git_commit", "git_dirty", "test_size", "num_classes", "conv_rms",
              "conv_rms_random", "first_eval_epoch", "first_eval_train_loss", "chance_loss",
              "failure_rule", "failure_hit", "failed", "learning_rate", "saturated_start",
              "first_eval_saturated", "first_eval_max_grad_norm", "max_grad_norm"}


@pytest.mark.slow
@pytest.mark.parametrize("vmap_seeds", [True, False])
def test_compare_trains_seeds_and_their_stacks_together_or_one_at_a_time(
        tiny_npz_module, tmp_path, monkeypatch, vmap_seeds):
    from scae.study import compare

    c = configs.mnist.get_config("smoke")
    c.data.source = f"npz:{tiny_npz_module}"
    c.data.validation_size = 60
    c.data.pretrain_size = 0
    c.pretrain.layers = 1
    c.compare.label_sizes = (40,)
    c.compare.num_seeds = 3
    c.compare.arms = ("pretrained",)
    c.compare.stack_per_seed = True
    c.compare.vmap_seeds = vmap_seeds
    data = inputs.build(c.data, c.seed)
    groups, stacks_together, stacks_alone = [], [], []
    real_cell = finetuning.run_cell
    real_together, real_alone = pretraining.pretrain_seeds, pretraining.pretrain

    def cell(config, data, stacks, size, arm, seeds, ckpt, log, **kwargs):
        groups.append(list(seeds))
        return real_cell(config, data, stacks, size, arm, seeds, ckpt, log, **kwargs)

    def together(config, images, val_images, workdir, seed_indices, log):
        stacks_together.append(list(seed_indices))
        return real_together(config, images, val_images, workdir, seed_indices, log)

    def alone(*args, seed_index=0, **kwargs):
        stacks_alone.append(seed_index)
        return real_alone(*args, seed_index=seed_index, **kwargs)

    monkeypatch.setattr(finetuning, "run_cell", cell)
    monkeypatch.setattr(pretraining, "pretrain_seeds", together)
    monkeypatch.setattr(pretraining, "pretrain", alone)
    rows = compare.compare(c, data, tmp_path, log=lambda _: None)
    assert groups == ([[0, 1, 2]] if vmap_seeds else [[0], [1], [2]])
    assert (stacks_together, stacks_alone) == (([[0, 1, 2]], []) if vmap_seeds
                                               else ([], [0, 1, 2]))
    assert sorted((r["seed"], r["stack_seed"]) for r in rows) == [(0, 0), (1, 1), (2, 2)]
    assert all(r["seeds_together"] == (3 if vmap_seeds else 1) for r in rows)
    assert all(set(r) == RUN_FIELDS for r in rows)
    pretrain = tmp_path / "pretrain"
    for folder in (pretrain, pretrain / "seed1", pretrain / "seed2"):
        assert (folder / "ckpt" / "layer1").is_dir() and (folder / "metrics.jsonl").is_file()
    assert not (pretrain / pretraining.SEEDS_CKPT).exists()
    assert (pretrain / "loss.png").is_file()  # seed 0's stack, for the figures


def test_frozen_arm_on_cached_features_trains_as_on_images(setup, tmp_path, monkeypatch):
    # Two seeds with their own stacks, dropout on: the cached path must draw the same batches
    # and masks and reach the same head as the path that runs the conv layers every step.
    c, data, s0 = setup
    c = c.copy_and_resolve_references()
    c.model.dropout = 0.3
    s1 = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(11))
    logs, runs = [], {}
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(finetuning, "FROZEN_CACHE_BYTES", 0)
        runs[cached] = finetuning.run_cell(c, data, [s0, s1], 40, "frozen", [0, 1],
                                           tmp_path / str(cached), log=logs.append)
    assert sum("computed once" in m for m in logs) == 1
    (rows_c, best_c), (rows_u, best_u) = runs[True], runs[False]
    for name in ("fc", "out"):
        np.testing.assert_allclose(best_c[name]["w"], best_u[name]["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(best_c["conv1"]["w"][1], models.params_of(s1)["layers"][0]["w"])
    assert [r["val_error"] for r in rows_c] == [r["val_error"] for r in rows_u]
    assert [r["best_epoch"] for r in rows_c] == [r["best_epoch"] for r in rows_u]


def test_frozen_features_index_each_seed_subset_in_order():
    subsets = np.array([[2, 5, 7], [1, 5, 9]])
    images = jnp.arange(10, dtype=jnp.float32).reshape(10, 1, 1, 1) * jnp.ones((10, 6, 6, 1))
    spec = models.CNNSpec(image_shape=(6, 6, 1), features=(2,), kernel_sizes=(3,),
                          pool_sizes=(1,), fc_width=3, num_classes=2)
    nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(2)]
    graphdef, _ = models.split(nets[0])
    params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
    labels = np.arange(10) % 2
    held = {"val": images[:3], "none": images[:0]}
    cache = finetuning.frozen_features(graphdef, params, images, labels, subsets, held)
    (f, y), pool = cache.data, cache.pool
    assert cache.copies == 2 and f.shape == (2 * 5, 4 * 4 * 2) and pool.shape == subsets.shape
    assert cache.held_out["val"].shape == (2, 3, 32) and cache.held_out["none"].shape == (2, 0, 32)
    for i in range(2):
        net = models.merge(graphdef, jax.tree.map(lambda a: a[i], params))
        want = net.features(images[subsets[i]])
        np.testing.assert_allclose(f[np.asarray(pool[i])], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y[np.asarray(pool[i])], labels[subsets[i]])
        np.testing.assert_allclose(cache.held_out["val"][i], net.features(images[:3]),
                                   rtol=1e-6, atol=1e-6)
    # Seeds with the same conv layers (one stack) share one copy: the union's rows only.
    same = jax.tree.map(lambda a: jnp.stack([a[0], a[0]]), params)
    same["fc"] = params["fc"]  # the heads still differ
    shared = finetuning.frozen_features(graphdef, same, images, labels, subsets, held)
    assert shared.copies == 1 and shared.data[0].shape == (5, 32)
    assert shared.held_out["val"].shape == (3, 32)
    net0 = models.merge(graphdef, jax.tree.map(lambda a: a[0], params))
    np.testing.assert_allclose(shared.data[0][np.asarray(shared.pool[1])],
                               net0.features(images[subsets[1]]), rtol=1e-6, atol=1e-6)
    # Over the byte bound: no cache.
    assert finetuning.frozen_features(graphdef, params, images, labels, subsets, held,
                                      max_bytes=2 * 8 * 32 * 4 - 1) is None
