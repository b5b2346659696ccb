"""Fine-tuning: weight transfer, the frozen arm, fair arms and vmapped seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.mnist
from scae import cae, cnn, finetune, inputs, stack, transfer
from scae.errors import InputError


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
    specs = stack.layer_specs(c, 1)
    params = [cae.init(s, jax.random.PRNGKey(10 + k)) for k, s in enumerate(specs)]
    return c, data, params


def test_transfer_copies_kernels_and_biases_and_leaves_the_head_random(setup):
    c, data, params = setup
    fresh = cnn.init(c.model, data.image_shape, jax.random.PRNGKey(0))
    logs = []
    out = transfer.load_stack(fresh, params, log=logs.append)
    for k, p in enumerate(params, start=1):
        np.testing.assert_array_equal(out[f"conv{k}"]["w"], p["w"])
        np.testing.assert_array_equal(out[f"conv{k}"]["b"], p["b"])
    for name in ("fc", "out"):
        for leaf in ("w", "b"):
            np.testing.assert_array_equal(out[name][leaf], fresh[name][leaf])
    assert "fc.w" in logs[0] and "out.b" in logs[0] and "conv1" not in logs[0]
    bad = [dict(params[0], w=jnp.zeros((3, 3, 1, 4)))] + params[1:]
    with pytest.raises(InputError, match="conv1.w"):
        transfer.load_stack(fresh, bad, log=lambda _: None)


def test_arms_share_subsets_and_the_frozen_arm_keeps_its_conv_weights(setup, tmp_path):
    c, data, params = setup
    out = {}
    for arm in ("random", "pretrained", "frozen"):
        out[arm] = finetune.run_cell(c, data, params, 40, arm, [0, 1], tmp_path / arm,
                                     log=lambda _: None)
    digests = {arm: [r["subset"] for r in rows] for arm, (rows, _) in out.items()}
    assert digests["random"] == digests["pretrained"] == digests["frozen"]
    assert digests["random"][0] != digests["random"][1]
    _, best = out["frozen"]
    for k, p in enumerate(params, start=1):
        for seed in range(2):
            np.testing.assert_array_equal(best[f"conv{k}"]["w"][seed], p["w"])
    # The head did train, and the pretrained arm moved its conv weights.
    fresh = finetune.initial_params(c, data.image_shape, params, "frozen", 0, log=lambda _: None)
    assert not np.allclose(best["fc"]["w"][0], fresh["fc"]["w"])
    assert not np.allclose(out["pretrained"][1]["conv1"]["w"][0], params[0]["w"])
    for rows, _ in out.values():
        for r in rows:
            assert 0 <= r["test_error"] <= 100 and 1 <= r["best_epoch"] <= r["epochs"]
            assert len(r["curve"]) == 3


def test_vmapped_seeds_equal_sequential_runs(setup, tmp_path):
    c, data, params = setup
    together, best = finetune.run_cell(c, data, params, 40, "pretrained", [0, 1],
                                       tmp_path / "v", log=lambda _: None)
    for i, seed in enumerate([0, 1]):
        (alone,), best1 = finetune.run_cell(c, data, params, 40, "pretrained", [seed],
                                            tmp_path / f"s{seed}", log=lambda _: None)
        np.testing.assert_allclose([p[1] for p in alone["curve"]],
                                   [p[1] for p in together[i]["curve"]], atol=1e-4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], rtol=1e-4, atol=1e-5),
                     best, best1)
