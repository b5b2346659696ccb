"""Each arm's own learning rate (config.finetune.arm_learning_rates) and the full-label schedule
(config.finetune.full_epochs): validation, what a cell trains at and records, the summary's
line, and the ablation config (configs/cifar10_ablation.py) that reads a sweep's choice."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

import configs.mnist
from scae import config as cfglib
from scae.data import inputs
from scae.errors import InputError
from scae.models import stack
from scae.report import tables as report
from scae.study import finetune as finetuning

ROOT = Path(__file__).resolve().parents[1]


def smoke(**finetune):
    c = configs.mnist.get_config("smoke")
    for k, v in finetune.items():
        c.finetune[k] = v
    return c


# ---------------------------------------------------------------------------------------------
# The config


@pytest.mark.parametrize("value,rates", [
    ((), {}),
    (("pretrained:0.01",), {"pretrained": 0.01}),
    (("random: 0.03", "frozen:0.1"), {"random": 0.03, "frozen": 0.1}),
    ((("pretrained", 0.005),), {"pretrained": 0.005}),
])
def test_arm_rates_are_read_in_each_form(value, rates):
    c = smoke(arm_learning_rates=value)
    cfglib.validate(c, "compare")
    assert cfglib.arm_learning_rates(c) == rates
    for arm in cfglib.ARMS:
        assert cfglib.arm_learning_rate(c, arm) == rates.get(arm, c.finetune.learning_rate)


@pytest.mark.parametrize("value,words", [
    (("pretrain:0.01",), ["unknown arm 'pretrain'", "random, pretrained, frozen"]),
    (("cae:0.01",), ["unknown arm 'cae'"]),
    (("pretrained:0",), ["'pretrained'", "> 0"]),
    (("pretrained:-0.01",), ["> 0"]),
    (("random:fast",), ["'random'", "> 0"]),
    (("random:nan",), ["> 0"]),
    ((("frozen", True),), ["> 0"]),
    (("random:0.01", "random:0.02"), ["more than one rate"]),
    (("random",), ["'arm:rate'"]),
    ("random:0.01", ["'arm:rate'"]),
])
def test_bad_arm_rates_are_one_clear_line(value, words):
    c = smoke()
    c.finetune.arm_learning_rates = None
    c.finetune.arm_learning_rates = value
    with pytest.raises(InputError) as e:
        cfglib.validate(c, "compare")
    text = str(e.value)
    assert text.startswith("config.finetune.arm_learning_rates: ") and "\n" not in text
    for w in words:
        assert w in text, text


def test_full_epochs_must_be_a_whole_number():
    c = smoke(full_epochs=-1)
    with pytest.raises(InputError, match="config.finetune.full_epochs"):
        cfglib.validate(c)
    cfglib.validate(smoke(full_epochs=60))


def test_rate_items_round_trip():
    items = cfglib.rate_items({"random": 0.03, "pretrained": 0.0005})
    assert items == ("random:0.03", "pretrained:0.0005")
    assert cfglib.arm_learning_rates(smoke(arm_learning_rates=items)) == {
        "random": 0.03, "pretrained": 0.0005}


# ---------------------------------------------------------------------------------------------
# A cell trains at its arm's rate and records it


@pytest.fixture(scope="module")
def setup(tiny_npz_module):
    c = smoke(epochs=2, evals=1, batch_size=10, steps_per_call=2)
    c.data.source = f"npz:{tiny_npz_module}"
    c.data.validation_size = 60
    c.data.test_size = 0
    c.data.pretrain_size = 0
    c.model.features = (4, 6, 8)
    c.model.fc_width = 12
    data = inputs.build(c.data, c.seed)
    s = stack.Stack(stack.layer_specs(c, 1), c.model.pool_sizes, rngs=nnx.Rngs(10))
    return c, data, s


def _cells(c, data, s, tmp_path, monkeypatch, arms, size=40):
    """Each arm's records and the rates its optimiser was built with."""
    seen = []
    real = finetuning.optim.make

    def make(cfg, *args, **kwargs):
        seen.append(cfg.learning_rate)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(finetuning.optim, "make", make)
    out = {}
    for arm in arms:
        seen.clear()
        rows, _ = finetuning.run_cell(c, data, None if arm == "random" else s, size, arm, [0],
                                      tmp_path / f"{arm}{size}", log=lambda _: None)
        out[arm] = (rows, sorted(set(seen)))
    return out


def test_a_rate_given_to_pretrained_only_leaves_random_unchanged(setup, tmp_path, monkeypatch):
    c, data, s = setup
    c = cfglib.with_overrides(c, {"finetune.arm_learning_rates": ("pretrained:0.05",)})
    out = _cells(c, data, s, tmp_path, monkeypatch, ("random", "pretrained", "frozen"))
    assert out["random"][1] == [0.02] and out["random"][0][0]["learning_rate"] == 0.02
    assert out["pretrained"][1] == [0.05] and out["pretrained"][0][0]["learning_rate"] == 0.05
    assert out["frozen"][1] == [0.02] and out["frozen"][0][0]["learning_rate"] == 0.02
    assert all(rows[0]["lr_scale"] == 1.0 for rows, _ in out.values())


def test_the_full_cell_trains_for_the_full_label_schedule(setup, tmp_path, monkeypatch):
    c, data, s = setup
    pool = int(data.train_images.shape[0])
    c = cfglib.with_overrides(c, {"finetune.full_epochs": 3})
    full = _cells(c, data, s, tmp_path, monkeypatch, ("random",), size=pool)["random"][0][0]
    part = _cells(c, data, s, tmp_path, monkeypatch, ("random",), size=40)["random"][0][0]
    assert full["epochs"] == 3 and full["full_epochs"] == 3 and full["label_size"] == pool
    assert part["epochs"] == 2 and "full_epochs" not in part


def test_the_summary_names_each_arms_rate():
    def row(arm, seed, rate=None):
        r = {"label_size": 100, "arm": arm, "seed": seed, "val_error": 10.0 + seed,
             "test_error": 11.0 + seed, "epochs": 2, "steps": 6, "best_epoch": 1}
        return r | ({"learning_rate": rate} if rate is not None else {})

    rows = [row("random", s, 0.03) for s in range(3)] + \
        [row("pretrained", s, 0.01) for s in range(3)]
    line = report.rates_line(rows)
    assert "random init 0.03; CAE pretrained 0.01" in line
    assert line in report.summary_markdown(rows, "cifar10")
    assert report.rates_line([row("random", 0)]) == ""  # older records: no line


# ---------------------------------------------------------------------------------------------
# The ablation config


def ablation():
    spec = importlib.util.spec_from_file_location("cifar10_ablation",
                                                  ROOT / "configs" / "cifar10_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ablation_config_loads_without_jax():
    path = str(ROOT / "configs" / "cifar10_ablation.py")
    code = ("import importlib.util as u, sys\n"
            f"spec = u.spec_from_file_location('a', {path!r})\n"
            "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "[m.get_config(p).to_dict() for p in m.PRESETS]\n"
            "print(','.join(k for k in ('jax', 'flax', 'optax', 'matplotlib')\n"
            "               if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_the_ablation_presets_validate_and_differ_in_the_recipe_only(monkeypatch, tmp_path):
    m = ablation()
    monkeypatch.setattr(m, "SWEEP_CHOICES", (tmp_path / "none.json",))
    got = {p: m.get_config(p) for p in m.PRESETS}
    for c in got.values():
        cfglib.validate(c, "compare")
        assert c.compare.num_seeds >= 5 and c.finetune.failure_rule == "restart"
        assert c.rates_from.startswith("stand-ins")
    v01, tuned, table = got["v0.1"], got["tuned"], got["table"]
    assert v01.data.standardize and v01.data.preprocess == "none"
    assert v01.finetune.weight_decay == 0 and not v01.finetune.augment_flip
    assert v01.finetune.augment_translate == 0
    assert tuned.data.preprocess == "gcn_zca" and tuned.finetune.augment_flip
    for c in (v01, tuned):
        assert tuple(c.compare.label_sizes) == (1000, 10000)
        assert tuple(c.compare.arms) == ("random", "pretrained")
    assert tuple(table.compare.arms) == cfglib.ARMS and len(table.compare.label_sizes) == 3
    from scae import workdir
    # The tuned preset's runs are the table's: the same settings.
    assert workdir.settings_digest(tuned, "compare") == workdir.settings_digest(table, "compare")
    assert workdir.settings_digest(v01, "compare") != workdir.settings_digest(tuned, "compare")
    with pytest.raises(InputError, match="preset"):
        m.get_config("paper")


def test_the_ablation_takes_each_arms_rate_from_a_finished_sweep(monkeypatch, tmp_path):
    m = ablation()
    best = {"label_size": 10000, "seeds": [0, 1, 2], "arms": list(cfglib.ARMS),
            "chosen": {"recipe": {"data.preprocess": "gcn_zca", "data.standardize": False,
                                  "finetune.weight_decay": 0.0005},
                       "arm_learning_rates": {"random": 0.03, "pretrained": 0.01,
                                              "frozen": 0.1},
                       "schedule": {"finetune.full_epochs": 60}, "full_epochs": 60},
            "recipes": [{"recipe": {**m.V01_RECIPE}, "arm_learning_rates": {
                "random": 0.01, "pretrained": 0.03, "frozen": 0.03}}]}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    monkeypatch.setattr(m, "ROOT", tmp_path)
    monkeypatch.setattr(m, "SWEEP_CHOICES", (tmp_path / "missing.json", path))
    tuned, table, v01 = m.get_config("tuned"), m.get_config("table"), m.get_config("v0.1")
    for c in (tuned, table):
        cfglib.validate(c, "compare")
        assert cfglib.arm_learning_rates(c) == {"random": 0.03, "pretrained": 0.01,
                                                "frozen": 0.1}
        assert c.finetune.full_epochs == 60 and c.finetune.weight_decay == 0.0005
        assert c.rates_from == "best.json"
    cfglib.validate(v01, "compare")
    assert cfglib.arm_learning_rates(v01) == {"random": 0.01, "pretrained": 0.03,
                                              "frozen": 0.03}
    assert v01.finetune.full_epochs == 0 and v01.data.preprocess == "none"
    # A sweep of the random arm alone does not cover the pretrained arm: the stand-ins.
    best["chosen"]["arm_learning_rates"] = {"random": 0.03}
    path.write_text(json.dumps(best))
    assert m.get_config("tuned").rates_from.startswith("stand-ins")
    assert cfglib.sweep_choice([path], None, ("random",))[0]["arm_learning_rates"] == {
        "random": 0.03}
    assert cfglib.sweep_choice([tmp_path / "missing.json"]) is None
