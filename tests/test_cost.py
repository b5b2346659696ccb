"""The cost model: each phase's work from the config, its time at measured rates, spread over
devices, and the command."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from scae import config as cfglib
from scae.errors import InputError
from scae.models import flops
from scae.study import cost

ROOT = Path(__file__).resolve().parents[1]


def test_the_phases_count_every_layer_and_cell_of_the_paper_preset():
    c = cfglib.dataset_config("mnist", "paper")
    phases = cost.study(c)
    names = [p.name for p in phases]
    assert names[:3] == ["pretrain layer 1", "pretrain layer 2", "pretrain layer 3"]
    assert len(phases) == 3 + len(c.compare.label_sizes) * len(c.compare.arms)
    # Layer 1: 50,000 images (60,000 less the validation split) for its epochs, 10 stacks.
    layer1 = phases[0]
    assert layer1.images == 50000 // c.pretrain.batch_size * c.pretrain.batch_size \
        * c.pretrain.epochs[0]
    assert layer1.seeds == c.compare.num_seeds
    assert layer1.flops == pytest.approx(
        flops.cae_step(28, 1, 5, c.model.features[0], 1) * layer1.images * layer1.seeds)
    random_1k = phases[names.index("random at 1,000 labels")]
    assert random_1k.images >= c.finetune.min_steps * c.finetune.batch_size
    assert random_1k.flops == pytest.approx(
        flops.cnn_step(c.model, (28, 28, 1), 1) * random_1k.images * random_1k.seeds)


def test_time_is_images_over_the_measured_rate_and_seeds_spread_over_devices():
    ph = [cost.PhaseCost("a", "cnn", None, 1000, 10, 0.0),
          cost.PhaseCost("b", "cae", 2, 500, 3, 0.0)]
    rates = {("cnn", None): 100.0, ("cae", 2): 50.0}
    assert cost.seconds(ph, rates, 1) == pytest.approx(10 * 10 + 10 * 3)
    assert cost.seconds(ph, rates, 4) == pytest.approx(10 * 3 + 10 * 1)  # ceil(10/4), ceil(3/4)
    with pytest.raises(KeyError):
        cost.seconds(ph, {("cnn", None): 1.0})
    records = [{"workload": "cnn", "layer": None, "arch": "mnist", "img_per_s": 7.0},
               {"workload": "cae", "layer": 2, "arch": "mnist", "img_per_s": 3.0},
               {"workload": "cae", "layer": 2, "arch": "cifar10", "img_per_s": 9.0},
               {"workload": "cnn", "arch": "mnist", "img_per_s": 99.0, "dtype": "bfloat16"}]
    assert cost.rates(records, "mnist") == {("cnn", None): 7.0, ("cae", 2): 3.0}
    assert [cost.duration(s) for s in (40, 720, 12000)] == ["40 s", "12 min", "3 h 20 min"]


def test_the_command_prints_the_table_and_refuses_a_missing_record(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipelines.cost", *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
    ok = run("--config=configs/cifar10.py:paper",
             "--rates=results/bench_h100/benchmark_fp32.jsonl", "--devices=8")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| pretrain layer 2 |" in ok.stdout and "| **study** |" in ok.stdout
    bad = run("--config=configs/mnist.py:paper", f"--rates={tmp_path / 'none.jsonl'}")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "none.jsonl: no such benchmark record" in bad.stderr


def test_a_sweep_costs_its_grid_its_stacks_once_per_pretraining_setting_and_its_schedules():
    c = cfglib.dataset_config("cifar10", "paper")
    c.sweep = ml_collections.ConfigDict({
        "label_size": 1000, "seeds": (0, 1), "arms": ("random", "pretrained"),
        "axes": {"preprocessing": ({"data.preprocess": "none"},
                                   {"data.preprocess": "gcn_zca", "data.standardize": False}),
                 "learning_rate": ({"finetune.learning_rate": 0.01},
                                   {"finetune.learning_rate": 0.03})},
        "full_axes": {"epochs": ({"finetune.full_epochs": 10}, {"finetune.full_epochs": 20})}})
    phases = cost.study(c)
    names = [p.name for p in phases]
    # Two preprocessings, so two pretraining settings: each one's stacks (one per seed), not
    # one per point; four points of two arms; two schedules of two arms.
    assert sum(n.startswith("pretrain layer 1") for n in names) == 2
    assert names.count("pretrained at 1,000 labels, point 3/4") == 1
    assert sum(" labels, point " in n for n in names) == 4 * 2
    assert all(p.seeds == 2 for p in phases)
    full = [p for p in phases if "full-label" in p.name]
    assert [p.name.split(", full")[0] for p in full] == ["random at all (45,000)",
                                                    "pretrained at all (45,000)"] * 2
    # No refit in a sweep: the whole pool of 45,000 labels, for the schedule's epochs.
    pool = 50000 - c.data.validation_size
    ten, twenty = full[0], full[2]
    assert ten.images == pool // c.finetune.batch_size * c.finetune.batch_size * 10
    assert twenty.images == 2 * ten.images
    grid = phases[names.index("random at 1,000 labels, point 1/4")]
    assert grid.images >= c.finetune.min_steps * c.finetune.batch_size
    # The random arm alone needs no stack.
    c.sweep.arms = ("random",)
    assert not any(p.workload == "cae" for p in cost.study(c))


def test_the_committed_sweep_config_costs_more_than_its_grid():
    """configs/cifar10_sweep.py, as the command prints it: 8 points of 3 arms, 2 pretraining
    settings, then 3 full-label schedules."""
    spec = importlib.util.spec_from_file_location("sweep_config",
                                                  ROOT / "configs" / "cifar10_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    phases = cost.study(module.get_config())
    assert sum(p.workload == "cae" for p in phases) == 2 * 3
    assert sum(", point " in p.name and p.workload == "cnn" for p in phases) == 8 * 3
    assert sum("full-label" in p.name for p in phases) == 3 * 3


GOOD = {"workload": "cnn", "layer": None, "arch": "mnist", "batch": 128, "img_per_s": 7.0}


@pytest.mark.parametrize("bad,why", [
    ({**GOOD, "img_per_s": "fast"}, "img_per_s: expected a finite number > 0, got 'fast'"),
    ({**GOOD, "img_per_s": -5.0}, "img_per_s: expected a finite number > 0, got -5.0"),
    ({**GOOD, "img_per_s": 0}, "img_per_s: expected a finite number > 0, got 0"),
    ({**GOOD, "img_per_s": float("nan")}, "img_per_s: expected a finite number > 0"),
    ({**GOOD, "img_per_s": None}, "img_per_s: expected a finite number > 0, got None"),
    ({k: v for k, v in GOOD.items() if k != "workload"}, "workload: expected 'cnn' or 'cae'"),
    ({k: v for k, v in GOOD.items() if k != "arch"}, "arch: expected a data set name"),
    ({**GOOD, "workload": "cae", "layer": None}, "layer: expected a CAE layer >= 1, got None"),
    ({**GOOD, "batch": "128"}, "batch: expected a whole number >= 1, got '128'"),
    ([1, 2], "expected a JSON object, got list")])
def test_a_malformed_rate_record_is_refused_naming_its_file_and_line(tmp_path, bad, why):
    machine = {"machine": "cpu", "peak_gflop_per_s": 1.0}
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(machine) + "\n\n" + json.dumps(GOOD) + "\n" + json.dumps(bad)
                    + "\n")
    with pytest.raises(InputError) as e:
        cost.rates_of(path, "mnist")
    assert str(e.value).startswith(f"{path} line 4: not a benchmark record (")
    assert why in str(e.value)
    # Records without their file (pipelines.gpu_run reads them itself): named by place.
    with pytest.raises(InputError, match=r"^benchmark record 3: not a benchmark record"):
        cost.rates([machine, GOOD, bad], "mnist")


def test_a_rates_file_that_is_not_json_lines_is_refused_in_cost_s_words(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("not json\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(InputError, match=r"bench.jsonl line 1: not a benchmark record \(not "
                                         r"JSON") as e:
        cost.rates_of(path, "mnist")
    assert "--overwrite" not in str(e.value)
    path.write_text(json.dumps(GOOD) + '\n{"workload": "cnn", "ar')  # a torn last line too
    with pytest.raises(InputError, match="bench.jsonl line 2: not a benchmark record"):
        cost.rates_of(path, "mnist")
    path.write_text("\n")
    with pytest.raises(InputError, match="no JSON lines"):
        cost.rates_of(path, "mnist")
    with pytest.raises(InputError, match="found a folder"):
        cost.rates_of(tmp_path, "mnist")
    path.write_text(json.dumps(GOOD) + "\n")
    assert cost.rates_of(path, "mnist") == {("cnn", None): 7.0}


def test_the_command_refuses_a_bad_rate_in_one_line(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({**GOOD, "img_per_s": -1.0}) + "\n")
    bad = subprocess.run([sys.executable, "-m", "pipelines.cost", "--config=configs/mnist.py:smoke",
                          f"--rates={path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr[-2000:]
    (line,) = bad.stderr.splitlines()
    assert f"{path} line 1: not a benchmark record (img_per_s" in line
