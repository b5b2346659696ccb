"""The recipe sweep (scae.study.sweep, pipelines.sweep): the grid, the overrides, the runs on the
validation split only, resuming, and the command end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import ml_collections
import numpy as np
import pytest
from absl import flags as absl_flags
from conftest import write_npz
from ml_collections import config_flags

from scae import api, atomic, provenance
from scae import config as cfglib
from scae.data import inputs as inputs_lib
from scae.errors import InputError
from scae.study import finetune as finetuning
from scae.study import sweep

ROOT = Path(__file__).resolve().parents[1]
LR = {"learning_rate": ({"finetune.learning_rate": 0.01}, {"finetune.learning_rate": 0.03})}


def sweep_config(axes=None, seeds=(0, 1), label_size=100) -> ml_collections.ConfigDict:
    """The MNIST smoke config with a sweep section."""
    c = api.make_config("mnist", "smoke")
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = label_size
    c.sweep.seeds = seeds
    c.sweep.axes = ml_collections.ConfigDict(LR if axes is None else axes)
    return c


def paper_sweep_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("cifar10_sweep",
                                                  ROOT / "configs" / "cifar10_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ---------------------------------------------------------------------------------------------
# The grid


def test_points_are_the_product_with_data_axes_first():
    axes = {
        "a_lr": ({"finetune.learning_rate": 0.01}, {"finetune.learning_rate": 0.03},
                 {"finetune.learning_rate": 0.1}),
        "z_pre": ({"data.standardize": True, "data.preprocess": "none"},
                  {"data.standardize": False, "data.preprocess": "gcn_zca"}),
    }
    pts = sweep.points(axes)
    assert len(pts) == 3 * 2
    # The data axis comes first though its name sorts last: the points sharing data settings
    # are adjacent, and the other axis varies fastest.
    assert [p["data.preprocess"] for p in pts] == ["none"] * 3 + ["gcn_zca"] * 3
    assert [p["finetune.learning_rate"] for p in pts] == [0.01, 0.03, 0.1] * 2
    # Several keys of one alternative go together into the point.
    assert pts[0] == {"data.standardize": True, "data.preprocess": "none",
                      "finetune.learning_rate": 0.01}
    assert pts[-1] == {"data.standardize": False, "data.preprocess": "gcn_zca",
                       "finetune.learning_rate": 0.1}
    assert len({sweep.point_id(p) for p in pts}) == 6
    # Three axes: the size is the product.
    three = dict(axes, m_wd=({"finetune.weight_decay": 0.0}, {"finetune.weight_decay": 5e-4}))
    assert len(sweep.points(three)) == 12
    # Tuples are stored as lists (JSON).
    assert sweep.points({"f": ({"model.features": (4, 4, 4)},)}) == [
        {"model.features": [4, 4, 4]}]


def test_points_of_the_paper_grid():
    c = paper_sweep_config()
    pts = sweep.points(c.sweep.axes.to_dict())
    assert len(pts) == 2 * 2 * 2
    assert [p["data.preprocess"] for p in pts] == ["none"] * 4 + ["gcn_zca"] * 4
    for p in pts:  # the options that go together stay together
        assert p["data.standardize"] == (p["data.preprocess"] == "none")
        assert (p["finetune.weight_decay"] > 0) == p["finetune.augment_flip"] \
            == (p["finetune.augment_translate"] > 0)
    for p in pts:  # every point is a valid config
        sweep.apply(c, p)


@pytest.mark.parametrize("axes", [{}, {"learning_rate": ()},
                                  {"a": ({"finetune.learning_rate": 0.1},), "b": []}])
def test_empty_grids_are_refused(axes):
    with pytest.raises(InputError, match="config.sweep.axes"):
        sweep.points(axes)


# ---------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize("key", ["finetune.no_such_key", "nosuch.learning_rate",
                                 "finetune.learning_rate.x", "no_such_top_key"])
def test_apply_refuses_unknown_keys(key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        sweep.apply(sweep_config(), {key: 1})


def test_apply_gives_a_validated_config():
    base = sweep_config()
    c = sweep.apply(base, {"finetune.learning_rate": 0.05, "model.features": [4, 6, 8],
                           "data.standardize": True})
    assert c.finetune.learning_rate == 0.05
    assert c.model.features == (4, 6, 8) and isinstance(c.model.features, tuple)
    assert c.data.standardize is True
    assert base.finetune.learning_rate == 0.02 and base.model.features == (8, 8, 8)  # a copy
    assert c.finetune.epochs == base.finetune.epochs and "sweep" in c
    with pytest.raises(InputError, match="finetune.epochs"):
        sweep.apply(base, {"finetune.epochs": 0})  # the result is validated
    with pytest.raises(InputError, match="model.kernel_sizes"):
        sweep.apply(base, {"model.features": [4, 4]})


# ---------------------------------------------------------------------------------------------
# Running the grid


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep on the smoke data: 2 data settings x 2 learning rates, 2 seeds, 100 labels;
    counts the builds and records how many test images each run was given."""
    w = tmp_path_factory.mktemp("sweep") / "w"
    config = sweep_config(dict(LR, z_standardize=({"data.standardize": False},
                                                  {"data.standardize": True})))
    builds, test_sizes, logs = [], [], []
    inputs = {}

    def build(c):
        full = inputs_lib.build(c.data, c.seed)
        builds.append(c.data.to_dict())
        inputs["last"] = full
        return full

    real = finetuning.run_cell

    def run_cell(c, data, *args, **kwargs):
        test_sizes.append((len(data.test_labels), len(data.test_images)))
        return real(c, data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetuning, "run_cell", run_cell)
        records = sweep.run(config, w, build=build, log=logs.append)
    return dict(config=config, workdir=w, records=records, builds=builds,
                test_sizes=test_sizes, logs=logs, inputs=inputs["last"])


def test_run_records_one_per_point(swept):
    config, records = swept["config"], swept["records"]
    grid = sweep.points(config.sweep.axes.to_dict())
    assert [r["point_id"] for r in records] == [sweep.point_id(p) for p in grid]
    assert [r["point"] for r in records] == grid
    for r in records:
        assert len(r["val_error"]) == 2 and r["seeds"] == [0, 1] and r["label_size"] == 100
        assert all(0.0 <= e <= 100.0 for e in r["val_error"])
        assert r["mean_val_error"] == pytest.approx(np.mean(r["val_error"]))
        assert r["std_val_error"] == pytest.approx(np.std(r["val_error"], ddof=1))
        assert r["base"] == sweep.base_digest(config)
        assert r["epochs"] == config.finetune.epochs and len(r["best_epoch"]) == 2
        # Each seed's failure-rule verdict, from its loss at the first evaluation.
        assert r["failure_hit"] == [not loss < np.log(10) for loss in r["first_eval_train_loss"]]
        # and each seed's diagnostics of what its run started from and met first
        assert all(len(r[k]) == 2 for k in sweep.RUN_DIAGNOSTICS)
        assert r["git_commit"] == provenance.git_state()["git_commit"] and "git_dirty" in r
    assert atomic.read_jsonl(swept["workdir"] / sweep.RECORDS) == records
    assert sum("sweep point" in m for m in swept["logs"]) == 4
    assert not (swept["workdir"] / "ckpt" / "point0").exists()  # the record is the result


def test_run_builds_once_per_data_setting(swept):
    assert len(swept["builds"]) == 2
    assert [b["standardize"] for b in swept["builds"]] == [False, True]


def test_runs_get_no_test_images(swept):
    assert len(swept["inputs"].test_labels) > 0  # the builder did make a test split
    assert swept["test_sizes"] == [(0, 0)] * 4


def test_second_call_does_not_retrain(swept, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was run again")

    monkeypatch.setattr(finetuning, "run_cell", refuse)
    builds, logs = [], []
    again = sweep.run(swept["config"], swept["workdir"],
                      build=lambda c: builds.append(c) or refuse(), log=logs.append)
    assert again == swept["records"]
    assert not any("sweep point" in m for m in logs) and builds == []
    # A smaller grid returns its own points only; the file keeps them all.
    fewer = swept["config"].copy_and_resolve_references()
    fewer.sweep.axes = ml_collections.ConfigDict(
        dict(LR, z_standardize=({"data.standardize": False},)))
    assert sweep.run(fewer, swept["workdir"], build=refuse, log=logs.append) == \
        swept["records"][:2]
    assert len(atomic.read_jsonl(swept["workdir"] / sweep.RECORDS)) == 4


def fake_rows(c, data, stack, label_size, arm, seeds, ckpt, log):
    assert stack is None and arm == "random" and len(data.test_labels) == 0
    e = 100 * c.finetune.learning_rate
    return [{"val_error": e + s, "epochs": 2, "steps": 6, "best_epoch": 1, "failure_hit": False,
             "first_eval_train_loss": 1.5} for s in seeds], {}


def test_a_larger_grid_runs_only_its_new_points(swept, tmp_path, monkeypatch):
    w = tmp_path / "w"
    shutil.copytree(swept["workdir"], w)
    bigger = swept["config"].copy_and_resolve_references()
    bigger.sweep.axes.learning_rate = (*LR["learning_rate"], {"finetune.learning_rate": 0.1})
    monkeypatch.setattr(finetuning, "run_cell", fake_rows)
    builds, logs = [], []
    data = swept["inputs"]
    records = sweep.run(bigger, w, build=lambda c: builds.append(c) or data, log=logs.append)
    assert len(records) == 6 and sum("sweep point" in m for m in logs) == 2
    assert len(builds) == 2  # the new points are at both data settings
    new = [r for r in records if r["point"]["finetune.learning_rate"] == 0.1]
    assert [r["val_error"] for r in new] == [[10.0, 11.0]] * 2
    assert all(r["mean_val_error"] == 10.5 for r in new)
    old = {r["point_id"]: r for r in swept["records"]}
    assert [r for r in records if r["point_id"] in old] == list(old.values())


def test_ready_is_called_once_before_any_write(swept, tmp_path, monkeypatch):
    monkeypatch.setattr(finetuning, "run_cell", fake_rows)
    w = tmp_path / "w"
    calls = []
    c = sweep_config(dict(LR, z_standardize=({"data.standardize": False},
                                             {"data.standardize": True})))

    def ready():
        calls.append(sorted(p.name for p in w.iterdir()) if w.exists() else None)
        w.mkdir()

    records = sweep.run(c, w, build=lambda _: swept["inputs"], log=lambda m: None,
                        ready=ready)
    assert len(records) == 4 and calls == [None]  # once, for two data settings, before writes
    sweep.run(c, w, build=lambda _: swept["inputs"], log=lambda m: None, ready=ready)
    assert calls == [None]  # nothing to run: not ready, nothing loaded


def test_label_size_beyond_the_pool_is_refused(swept, tmp_path, monkeypatch):
    monkeypatch.setattr(finetuning, "run_cell", fake_rows)
    c = sweep_config(label_size=10**6)
    with pytest.raises(InputError, match="config.sweep.label_size"):
        sweep.run(c, tmp_path, build=lambda _: swept["inputs"], log=lambda m: None)
    assert not (tmp_path / sweep.RECORDS).exists()


def test_records_from_another_base_are_refused(swept):
    other = swept["config"].copy_and_resolve_references()
    other.finetune.epochs = 3  # outside the grid
    with pytest.raises(InputError, match="another base config") as e:
        sweep.check_records(other, swept["workdir"])
    assert "\n" not in str(e.value) and str(swept["workdir"] / sweep.RECORDS) in str(e.value)

    def never(*args, **kwargs):
        raise AssertionError("ran before refusing")

    with pytest.raises(InputError, match="another base config"):
        sweep.run(other, swept["workdir"], build=never, log=never)
    assert atomic.read_jsonl(swept["workdir"] / sweep.RECORDS) == swept["records"]
    assert sweep.check_records(swept["config"], swept["workdir"]) == swept["records"]


def test_base_digest_ignores_the_keys_the_grid_sets(swept):
    config = swept["config"]
    digest = sweep.base_digest(config)

    def changed(**sections):
        c = config.copy_and_resolve_references()
        for name, value in sections.items():
            section, field = name.split("__")
            c[section][field] = value
        return sweep.base_digest(c)

    # Keys the grid sets: a config that adopts the chosen values keeps its records.
    assert changed(finetune__learning_rate=0.03) == digest
    assert changed(data__standardize=True) == digest
    assert changed(compare__num_seeds=7) == digest  # not used by the sweep
    assert changed(sweep__seeds=(0, 1, 2)) == digest
    # Anything else is another base.
    assert changed(finetune__epochs=3) != digest
    assert changed(data__validation_size=300) != digest
    assert changed(model__fc_width=32) != digest
    adopted = config.copy_and_resolve_references()
    adopted.finetune.learning_rate = 0.03
    assert sweep.check_records(adopted, swept["workdir"]) == swept["records"]


# ---------------------------------------------------------------------------------------------
# best, flags, table


def record(point, errs, seeds=None, **extra) -> dict:
    seeds = list(range(len(errs))) if seeds is None else seeds
    return {"point_id": sweep.point_id(point), "point": point, "base": "b", "label_size": 100,
            "seeds": seeds, "val_error": errs, "mean_val_error": float(np.mean(errs)),
            "std_val_error": float(np.std(errs, ddof=1)) if len(errs) > 1 else math.nan,
            "epochs": 2, "steps": 6, "best_epoch": [1] * len(errs), "time_s": 3.0} | extra


def test_best():
    a = record({"finetune.learning_rate": 0.01}, [30.0, 32.0])
    b = record({"finetune.learning_rate": 0.03}, [29.0, 31.0])
    c = record({"finetune.learning_rate": 0.1}, [31.0, 29.0])  # ties with b: b is earlier
    assert sweep.best([a, b, c]) is b
    assert sweep.best([a, c, b]) is c
    assert sweep.best([a]) is a
    with pytest.raises(InputError, match="no finished points"):
        sweep.best([])


def test_flags_text():
    point = {"finetune.learning_rate": 0.03, "data.preprocess": "gcn_zca",
             "finetune.augment_flip": True, "data.standardize": False,
             "model.features": [4, 6, 8], "model.kernel_sizes": [5],
             "finetune.augment_translate": 2, "finetune.weight_decay": 0.0005}
    assert sweep.flags(point) == (
        "--config.data.preprocess=gcn_zca --config.data.standardize=False "
        "--config.finetune.augment_flip=True --config.finetune.augment_translate=2 "
        "--config.finetune.learning_rate=0.03 --config.finetune.weight_decay=0.0005 "
        "--config.model.features=(4,6,8) --config.model.kernel_sizes=(5,)")
    assert sweep.flags({"model.features": (4, 6, 8)}) == "--config.model.features=(4,6,8)"


def test_flags_parse_back_to_the_point():
    """The flags, given to a command's --config, set the point's values."""
    point = {"finetune.learning_rate": 0.03, "data.preprocess": "gcn_zca",
             "finetune.augment_flip": True, "data.standardize": False,
             "model.features": [4, 6, 8], "model.kernel_sizes": [5, 5, 5],
             "finetune.weight_decay": 0.0005}
    argv = ["prog", "--cfg=configs/mnist.py:smoke",
            *sweep.flags(point).replace("--config.", "--cfg.").split()]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("cfg", flag_values=values)
    with mock.patch.object(sys, "argv", argv):  # config_flags reads the overrides from argv
        values(argv)
    parsed = values.cfg
    expected = sweep.apply(api.make_config("mnist", "smoke"), point)
    for key in point:
        section, field = key.split(".")
        assert parsed[section][field] == expected[section][field], key
        assert type(parsed[section][field]) is type(expected[section][field]), key


def test_table_ranks_best_first():
    recs = [record({"finetune.learning_rate": 0.01, "data.preprocess": "none"}, [30.0, 34.0]),
            record({"finetune.learning_rate": 0.03, "data.preprocess": "none"}, [10.0, 12.0]),
            record({"finetune.learning_rate": 0.1, "data.preprocess": "gcn_zca"}, [20.0])]
    lines = sweep.table(recs).splitlines()
    assert lines[0].startswith("| rank | preprocess | learning_rate | validation error (%) |")
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in body] == ["1", "2", "3"]
    assert [row[2] for row in body] == ["0.03", "0.1", "0.01"]
    assert body[0][1] == '"none"' and body[1][1] == '"gcn_zca"'
    assert body[0][3] == f"11.00 ± {np.std([10.0, 12.0], ddof=1):.2f}"
    assert body[1][3] == "20.00"  # one seed: no spread
    assert body[2][3].startswith("32.00 ± ")
    assert sweep.table([]) == "No finished points."
    # Runs that never trained are counted per point; records without the verdict show a dash.
    assert [row[5] for row in body] == ["—", "—", "—"]
    hit = dict(recs[0], failure_hit=[True, False])
    assert [c.strip() for c in sweep.table([hit]).splitlines()[2].split("|")][6] == "1 of 2"
    md = sweep.markdown(recs)
    assert "Best: " + recs[1]["point_id"] in md
    assert "    " + sweep.flags(recs[1]["point"]) in md
    assert "at 100 labels" in md and "Test images are not used" in md
    assert "saturated" not in md  # records made before the diagnostics: no such table


def test_the_diagnostics_table_gives_each_arm_and_point_its_runs_spread():
    diag = lambda loss, norms, start, first: dict(
        failure_hit=[False] * 2, first_eval_train_loss=loss, first_eval_max_grad_norm=norms,
        saturated_start=[start] * 2, first_eval_saturated=[first] * 2)
    rate = lambda r: {"finetune.learning_rate": r}
    recs = [record(rate(0.05), [89.0, 90.0], arm="pretrained", stage="grid",
                   **diag([30.0, 52.5], [1234.0, 87.0], [0.5, 0.25, 0.0, 0.1], [1, 1, 1, 1])),
            record(rate(0.01), [45.0, 46.0], **diag([1.8, 1.9], [3.1, 2.9], [0, 0, 0, 0],
                                                    [0, 0.02, 0.04, 0.5]))]
    lines = sweep.diagnostics_table(recs).splitlines()
    assert "conv1 / conv2 / conv3 / fc" in lines[0]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert body == [["random init", "finetune.learning_rate=0.01", "1.80–1.90", "2.9–3.1",
                     "0 / 0 / 0 / 0", "0 / 2 / 4 / 50"],
                    ["CAE pretrained", "finetune.learning_rate=0.05", "30.00–52.50",
                     "87–1.23e+03", "50 / 25 / 0 / 10", "100 / 100 / 100 / 100"]]
    md = sweep.markdown(recs)
    assert "## What the runs started from and met first" in md and lines[0] in md
    assert sweep.diagnostics_table([record(rate(0.01), [1.0])]) == ""


# ---------------------------------------------------------------------------------------------
# The command


CONFIG_FILE = '''
import ml_collections
from scae import api


def get_config(arg=None):
    c = api.make_config("mnist", "smoke")
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = 100
    c.sweep.seeds = (0, 1)
    rates = (0.01, 0.05) + ((0.1,) if arg == "more" else ())
    c.sweep.axes = ml_collections.ConfigDict({"learning_rate": tuple(
        {"finetune.learning_rate": r} for r in rates)})
    return c
'''


def command(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("SCAE_TEST_PLATFORMS", "cpu"),
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipelines.sweep", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_clean_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.slow
def test_command_end_to_end(tmp_path):
    cfg = tmp_path / "small_sweep.py"
    cfg.write_text(CONFIG_FILE)
    w = tmp_path / "w"
    proc = command(f"--config={cfg}", f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("sweep.jsonl", "sweep.md", "best_flags.txt", "best.json", "machine.json",
                 "config.json"):
        assert (w / name).is_file() and (w / name).stat().st_size > 0, name
    records = atomic.read_jsonl(w / sweep.RECORDS)
    assert [r["point"] for r in records] == [{"finetune.learning_rate": 0.01},
                                             {"finetune.learning_rate": 0.05}]
    assert all(len(r["val_error"]) == 2 for r in records)
    top = sweep.best(records)
    assert (w / "best_flags.txt").read_text() == sweep.flags(top["point"]) + "\n"
    assert (w / "sweep.md").read_text() == sweep.markdown(records)
    assert sweep.markdown(records) in proc.stdout
    assert proc.stderr.count("sweep point") == 2
    machine = json.loads((w / "machine.json").read_text())
    assert machine["sessions"] == 1 and machine["resumed"] is False
    assert "sessions_unrecorded" not in machine
    assert machine["command"].startswith("python -m pipelines.sweep --config=")
    # Where the session's wall time went, as every command's machine.json has it.
    parts, total = machine["time_breakdown_s"], machine["time_breakdown_total_s"]
    assert abs(sum(parts.values()) - total) <= 0.02 * total, (parts, total)
    assert parts["training steps"] > 0 and parts["compilation"] > 0

    # Rerun: trains nothing and keeps the record of the session that did the work.
    again = command(f"--config={cfg}", f"--workdir={w}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep point" not in again.stderr
    assert atomic.read_jsonl(w / sweep.RECORDS) == records
    assert json.loads((w / "machine.json").read_text()) == machine

    # A larger grid: runs its new point only and adds its session to machine.json.
    more = command(f"--config={cfg}:more", f"--workdir={w}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stderr.count("sweep point") == 1 and "sweep point 3/3" in more.stderr
    assert atomic.read_jsonl(w / sweep.RECORDS)[:2] == records
    second = json.loads((w / "machine.json").read_text())
    assert second["sessions"] == 2 and second["resumed"] is True
    assert "sessions_unrecorded" not in second
    assert second["total_wall_time_s"] == pytest.approx(
        machine["total_wall_time_s"] + second["wall_time_s"], abs=0.11)

    # Another base config: refused before anything is written.
    before = {p.name: p.read_bytes() for p in w.iterdir() if p.is_file()}
    other = command(f"--config={cfg}", f"--workdir={w}", "--config.finetune.epochs=3")
    assert_clean_failure(other, "another base config")
    assert {p.name: p.read_bytes() for p in w.iterdir() if p.is_file()} == before


def test_command_refuses_a_config_without_a_sweep(tmp_path):
    proc = command("--config=configs/mnist.py:smoke", f"--workdir={tmp_path / 'w'}")
    assert_clean_failure(proc, "sweep")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# Every arm tuned: the pretrained and frozen arms, each arm's rate, the full-label schedule


def arm_record(point, errs, arm="random", stage="grid", label_size=100):
    r = record(point, errs, label_size=label_size)
    return r | ({"arm": arm, "stage": stage} if arm != "random" or stage != "grid" else {})


def two_arm_records():
    """Two recipes x two rates x two arms. Random is best at recipe A (0.03), pretrained at
    recipe B (0.01); over the arms, each at its own best rate, recipe B wins."""
    out = []
    errs = {("A", 0.01): (30.0, 40.0), ("A", 0.03): (28.0, 39.0),
            ("B", 0.01): (29.0, 31.0), ("B", 0.03): (29.5, 35.0)}
    for (recipe, rate), (random_err, pretrained_err) in errs.items():
        point = {"data.standardize": recipe == "A", "finetune.learning_rate": rate}
        out.append(arm_record(point, [random_err, random_err]))
        out.append(arm_record(point, [pretrained_err, pretrained_err], "pretrained"))
    return out


def test_choose_tunes_each_arm_and_the_recipe_over_the_arms():
    recs = two_arm_records()
    choice = sweep.choose(recs, ("random", "pretrained"))
    assert choice["arms"] == ["random", "pretrained"]
    a, b = choice["recipes"]
    assert a["recipe"] == {"data.standardize": True}
    assert a["arm_learning_rates"] == {"random": 0.03, "pretrained": 0.03}
    assert a["score"] == pytest.approx((28.0 + 39.0) / 2)
    assert b["arm_learning_rates"] == {"random": 0.01, "pretrained": 0.01}
    assert b["score"] == pytest.approx((29.0 + 31.0) / 2)
    top = choice["chosen"]
    assert top["recipe"] == {"data.standardize": False}  # B, though random alone prefers A
    assert top["arm_learning_rates"] == {"random": 0.01, "pretrained": 0.01}
    assert top["schedule"] is None and top["full_epochs"] is None
    # The random arm alone: the best point, as before.
    alone = sweep.choose([r for r in recs if "arm" not in r])
    assert alone["chosen"]["recipe"] == {"data.standardize": True}
    assert sweep.best_flags(alone) == sweep.flags(sweep.best([r for r in recs if "arm" not in r])
                                                  ["point"])
    # A recipe that an arm has not finished is not chosen.
    partial = [r for r in recs if not (r.get("arm") == "pretrained"
                                       and r["point"]["data.standardize"] is False)]
    assert sweep.choose(partial, ("random", "pretrained"))["chosen"]["recipe"] == {
        "data.standardize": True}
    with pytest.raises(InputError, match="every arm"):
        sweep.choose([r for r in recs if "arm" not in r], ("random", "pretrained"))


def test_choose_takes_the_full_label_schedule_of_the_chosen_recipe_and_rates():
    recs = two_arm_records()
    rates = ["random:0.01", "pretrained:0.01"]
    for epochs, (e_random, e_pre) in ((30, (20.0, 21.0)), (60, (19.0, 19.5)),
                                       (100, (18.0, 22.0))):
        point = {"data.standardize": False, "finetune.arm_learning_rates": rates,
                 "finetune.full_epochs": epochs}
        recs += [arm_record(point, [e_random] * 2, "random", "schedule", 450),
                 arm_record(point, [e_pre] * 2, "pretrained", "schedule", 450)]
    # Runs of another recipe's rates are not read.
    stale = {"data.standardize": False, "finetune.arm_learning_rates": ["random:0.03"],
             "finetune.full_epochs": 100}
    recs.append(arm_record(stale, [1.0, 1.0], "random", "schedule", 450))
    choice = sweep.choose(recs, ("random", "pretrained"))
    assert choice["chosen"]["schedule"] == {"finetune.full_epochs": 60}
    assert choice["chosen"]["full_epochs"] == 60
    text = sweep.best_flags(choice)
    assert text == ("--config.data.standardize=False --config.finetune.full_epochs=60 "
                    "--config.finetune.learning_rate=0.01 "
                    "--config.finetune.arm_learning_rates=random:0.01 "
                    "--config.finetune.arm_learning_rates=pretrained:0.01")
    md = sweep.markdown(recs)
    assert "## random init" in md and "## CAE pretrained" in md
    assert "The full-label schedule (450 labels, no refit)" in md
    assert "Chosen: data.standardize=false; rates: random init 0.01, CAE pretrained 0.01; " \
           "full-label schedule: finetune.full_epochs=60" in md
    assert "    " + text in md


def test_best_flags_with_arm_rates_parse_back_to_a_valid_config():
    choice = sweep.choose(two_arm_records(), ("random", "pretrained"))
    argv = ["prog", "--cfg=configs/mnist.py:smoke",
            *sweep.best_flags(choice).replace("--config.", "--cfg.").split()]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("cfg", flag_values=values)
    with mock.patch.object(sys, "argv", argv):
        values(argv)
    c = values.cfg
    cfglib.validate(c, "compare")
    assert cfglib.arm_learning_rates(c) == {"random": 0.01, "pretrained": 0.01}
    assert c.data.standardize is False


@pytest.mark.parametrize("arms", [(), ("random", "cae"), ("random", "random")])
def test_bad_sweep_arms_are_refused(arms):
    c = sweep_config()
    c.sweep.arms = arms
    with pytest.raises(InputError, match="config.sweep.arms"):
        sweep.arms_of(c)


@pytest.mark.parametrize("key, value", [
    ("seeds", ()), ("seeds", (0, 0)), ("seeds", (-1,)), ("seeds", (0.5,)), ("seeds", (True,)),
    ("label_size", 0), ("label_size", -5)])
def test_bad_sweep_seeds_and_label_sizes_are_refused_before_any_run(key, value, tmp_path):
    c = sweep_config()
    with c.unlocked():
        c.sweep[key] = value
    with pytest.raises(InputError, match=f"config.sweep.{key}"):
        sweep.run(c, tmp_path / "w", build=lambda c: pytest.fail("no data is loaded"))
    assert not (tmp_path / "w").exists()


def test_base_digest_ignores_what_the_sweep_chooses():
    c = sweep_config()
    digest = sweep.base_digest(c)
    c.finetune.arm_learning_rates = ("pretrained:0.01",)
    c.finetune.full_epochs = 60
    c.finetune.refit_full = True
    assert sweep.base_digest(c) == digest


def cifar_shaped(tmp_path: Path) -> Path:
    """A CIFAR-shaped data set (32x32 RGB, 10 classes) of a few hundred images."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 300), ("test", 200)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(tmp_path / "cifar.npz", **arrays)
    return tmp_path / "cifar.npz"


@pytest.fixture(scope="module")
def swept_arms(tmp_path_factory):
    """The CIFAR-10 smoke config on CIFAR-shaped images: two rates x the random and
    pretrained arms at 50 labels, then the full-label cell (the pool of 100) at 1 and 2
    epochs; counts the builds and the stacks each cell was given."""
    tmp = tmp_path_factory.mktemp("arms")
    c = api.make_config("cifar10", "smoke", data__source=f"npz:{cifar_shaped(tmp)}",
                        data__pretrain_size=0)
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = 50
    c.sweep.seeds = (0, 1)
    c.sweep.arms = ("random", "pretrained")
    c.sweep.axes = ml_collections.ConfigDict(
        {"learning_rate": ({"finetune.learning_rate": 0.01}, {"finetune.learning_rate": 0.05})})
    c.sweep.full_axes = ml_collections.ConfigDict(
        {"epochs": ({"finetune.full_epochs": 1}, {"finetune.full_epochs": 2})})
    builds, cells = [], []
    real = finetuning.run_cell

    def run_cell(cfg, data, stacks, size, arm, *args, **kwargs):
        cells.append((arm, size, None if stacks is None else len(stacks),
                      len(data.test_labels), cfg.finetune.learning_rate,
                      tuple(cfg.finetune.arm_learning_rates)))
        return real(cfg, data, stacks, size, arm, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetuning, "run_cell", run_cell)
        records = sweep.run(c, tmp / "w", build=lambda cfg: builds.append(1) or
                            inputs_lib.build(cfg.data, cfg.seed), log=lambda m: None)
    return dict(config=c, workdir=tmp / "w", records=records, builds=builds, cells=cells)


@pytest.mark.heavy
@pytest.mark.slow
def test_the_sweep_trains_and_ranks_both_arms(swept_arms):
    records, cells = swept_arms["records"], swept_arms["cells"]
    assert len(records) == 2 * 2 + 2 * 2
    grid, full = records[:4], records[4:]
    assert [(r.get("arm", "random"), r["point"]["finetune.learning_rate"]) for r in grid] == [
        ("random", 0.01), ("pretrained", 0.01), ("random", 0.05), ("pretrained", 0.05)]
    assert all(r["label_size"] == 50 and len(r["val_error"]) == 2 for r in grid)
    # The pretrained arm starts from a stack per seed... (the smoke preset shares seed 0's)
    assert [c[2] for c in cells] == [None, 2] * 4
    assert all(c[3] == 0 for c in cells)  # no test images, any arm
    # ...pretrained once into the workdir, for the one data setting, and built once.
    assert len(list((swept_arms["workdir"] / "stacks").iterdir())) == 1
    assert len(swept_arms["builds"]) == 1
    # Every grid run trains every arm at the point's rate.
    assert all(c[5] == () for c in cells[:4])
    # The full-label cell: the whole pool of 100, at each arm's chosen rate.
    choice = sweep.choose(grid, ("random", "pretrained"))
    rates = choice["chosen"]["arm_learning_rates"]
    assert all(r["stage"] == "schedule" and r["label_size"] == 100 for r in full)
    assert [r["epochs"] for r in full] == [1, 1, 2, 2]
    assert [r["learning_rate"] for r in full] == [rates["random"], rates["pretrained"]] * 2
    assert all(c[5] == cfglib.rate_items(rates) for c in cells[4:])
    best = sweep.best_record(records, swept_arms["config"])
    assert best["chosen"]["full_epochs"] in (1, 2) and best["label_size"] == 50
    assert best["arms"] == ["random", "pretrained"] and len(best["recipes"]) == 1
    assert atomic.read_jsonl(swept_arms["workdir"] / sweep.RECORDS) == records
    assert not any((swept_arms["workdir"] / "ckpt").iterdir())


@pytest.mark.heavy
@pytest.mark.slow
def test_a_second_call_retrains_no_arm(swept_arms, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(finetuning, "run_cell", refuse)
    again = sweep.run(swept_arms["config"], swept_arms["workdir"], build=refuse,
                      log=lambda m: None)
    assert again == swept_arms["records"]
    # Three seeds are other runs: the two-seed records do not count for them.
    more = swept_arms["config"].copy_and_resolve_references()
    more.sweep.seeds = (0, 1, 2)
    with pytest.raises(AssertionError, match="trained again"):
        sweep.run(more, swept_arms["workdir"], build=refuse, log=lambda m: None)


def test_every_arm_at_every_point_with_stacks_once_per_data_setting(swept, tmp_path,
                                                                     monkeypatch):
    """The sweep's bookkeeping with the training faked: which cells run, with which stacks
    and rates, the full-label stage at the pool's size, and resuming."""
    pretrained, cells = [], []

    def pretrain_seeds(c, images, val_images, where, indices, log):
        pretrained.append((where.name, list(indices), c.data.standardize))
        return [f"stack{i}-{c.data.standardize}" for i in indices]

    def run_cell(c, data, stacks, size, arm, seeds, ckpt, log):
        cells.append((arm, size, stacks, tuple(c.finetune.arm_learning_rates)))
        rate = cfglib.arm_learning_rate(c, arm)
        bonus = {"random": 0.0, "pretrained": -1.0, "frozen": 5.0}[arm]
        e = 100 * rate + bonus + c.finetune.get("full_epochs", 0) % 7
        return [{"val_error": e + s, "epochs": 2, "steps": 6, "best_epoch": 1,
                 "failure_hit": False, "first_eval_train_loss": 1.5,
                 "learning_rate": rate} for s in seeds], {}

    monkeypatch.setattr(finetuning, "run_cell", run_cell)
    monkeypatch.setattr(sweep.pretraining, "pretrain_seeds", pretrain_seeds)
    c = sweep_config(dict(LR, z_standardize=({"data.standardize": False},
                                             {"data.standardize": True})))
    c.compare.stack_per_seed = True
    c.sweep.arms = ("random", "pretrained", "frozen")
    c.sweep.full_axes = ml_collections.ConfigDict(
        {"epochs": ({"finetune.full_epochs": 3}, {"finetune.full_epochs": 6})})
    builds = []
    records = sweep.run(c, tmp_path, build=lambda cfg: builds.append(1) or swept["inputs"],
                        log=lambda m: None)
    pool = len(swept["inputs"].train_labels)
    # The data of each setting built once for the grid, and the chosen one's again for the
    # full-label cell.
    assert len(records) == 4 * 3 + 2 * 3 and len(builds) == 3
    # One set of per-seed stacks per data setting, under the workdir's stacks/ folder (the
    # full-label cell's are the chosen setting's, which a real run loads from there).
    assert [(p[1], p[2]) for p in pretrained] == [([0, 1], False), ([0, 1], True),
                                                  ([0, 1], False)]
    assert len({p[0] for p in pretrained}) == 2 and pretrained[0][0] == pretrained[2][0]
    for arm, _size, stacks, _ in cells:
        assert (stacks is None) == (arm == "random")
        if stacks:
            assert len(stacks) == 2 and stacks[0].startswith("stack0")
    # The grid's runs at 100 labels, every arm at the point's rate; then the full-label cell.
    assert [c[1] for c in cells] == [100] * 12 + [pool] * 6
    assert all(c[3] == () for c in cells[:12])
    choice = sweep.choose(records[:12], c.sweep.arms)
    assert choice["chosen"]["arm_learning_rates"] == {"random": 0.01, "pretrained": 0.01,
                                                      "frozen": 0.01}
    assert all(c[3] == cfglib.rate_items(choice["chosen"]["arm_learning_rates"])
               for c in cells[12:])
    assert [r["label_size"] for r in records[12:]] == [pool] * 6
    assert sweep.best_record(records, c)["chosen"]["full_epochs"] == 3
    # A rerun trains nothing, and loads no data.
    monkeypatch.setattr(finetuning, "run_cell", None)
    assert sweep.run(c, tmp_path, build=None, log=lambda m: None) == records


# ---------------------------------------------------------------------------------------------
# The data checked against every run still to train before the workdir changes


def small_data_config(tmp_path: Path, shape=(28, 28), num_classes=10, num_train=300,
                      validation_size=20, **sweep_keys) -> ml_collections.ConfigDict:
    """The MNIST smoke sweep on a small npz data set (by default 280 labelled images after 20
    of validation), with no test images to speak of."""
    source = write_npz(tmp_path / "d.npz", num_train=num_train, num_test=10, shape=shape,
                       num_classes=num_classes)
    c = sweep_config()
    c.data.source, c.data.pretrain_size = f"npz:{source}", 0
    c.data.validation_size = validation_size
    with c.sweep.unlocked():
        for key, value in sweep_keys.items():
            c.sweep[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return c


KERNELS_TOO_BIG = {"model.kernel_sizes": (9, 9, 3)}  # 28x28 -> 10x10 -> 1x1: no room for 3x3


@pytest.mark.parametrize("case, fragments", [
    (dict(label_size=1000), ["config.sweep.label_size: 1000 labels asked for, the pool has 280"]),
    # Every class in the validation split and the pool, as a shuffled file has them.
    (dict(num_classes=200, num_train=400, validation_size=200),
     ["config.model.num_classes: the data set has 200 classes",
                             "model outputs 10"]),
    (dict(shape=(12, 12)), ["config.model.kernel_sizes: layer 2's kernel", "12x12"]),
    # A later point's model: the first point would have trained and written its record.
    (dict(axes=dict(LR, kernels=({}, KERNELS_TOO_BIG))), ["config.model.kernel_sizes"]),
    # A later point's data (another validation split: a pool of 50 for 100 labels), which
    # only a load of that setting tells.
    (dict(axes=dict(LR, split=({"data.validation_size": 20}, {"data.validation_size": 250}))),
     ["config.sweep.label_size: 100 labels asked for, the pool has 50"]),
    # The full-label stage's model, which runs only after the whole grid.
    (dict(full_axes={"kernels": (KERNELS_TOO_BIG,)}), ["config.model.kernel_sizes"]),
])
def test_data_that_do_not_fit_a_run_are_refused_before_ready(tmp_path, monkeypatch, case,
                                                              fragments):
    def refuse(*args, **kwargs):
        raise AssertionError("a run trained before every run was checked against its data")

    monkeypatch.setattr(finetuning, "run_cell", refuse)
    c = small_data_config(tmp_path, **case)
    w, ready = tmp_path / "w", []
    with pytest.raises(InputError) as e:
        sweep.run(c, w, build=lambda cfg: inputs_lib.build(cfg.data, cfg.seed),
                  log=lambda m: None, ready=lambda: ready.append(1))
    assert "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)
    assert ready == [] and not w.exists()  # the command's workdir is not touched


def test_only_data_settings_of_another_shape_are_loaded_for_the_check(tmp_path, monkeypatch):
    """The check loads a setting ahead only when its images, classes or pool may differ (its
    source, validation split, ...), never for a normalisation of the same images."""
    monkeypatch.setattr(finetuning, "run_cell", fake_rows)
    c = small_data_config(tmp_path, axes=dict(
        LR, pre=({"data.standardize": False}, {"data.standardize": True})))
    builds = []

    def build(cfg):
        builds.append((cfg.data.standardize, cfg.data.validation_size))
        return inputs_lib.build(cfg.data, cfg.seed)

    assert len(sweep.run(c, tmp_path / "w", build=build, log=lambda m: None)) == 4
    assert builds == [(False, 20), (True, 20)]  # once per setting, as before the check
    c.sweep.axes = ml_collections.ConfigDict(
        dict(LR, split=({"data.validation_size": 20}, {"data.validation_size": 30})))
    builds.clear()
    assert len(sweep.run(c, tmp_path / "w2", build=build, log=lambda m: None)) == 4
    # The other split's loaded once ahead, to check it, then each for its runs.
    assert builds == [(False, 30), (False, 20), (False, 30)]


def test_every_recipe_with_every_full_label_alternative_is_checked_before_any_run(tmp_path):
    """The full-label stage trains the chosen recipe with each alternative: a combination
    that is no valid config is refused before anything loads, not after the grid."""
    c = small_data_config(
        tmp_path,
        axes=dict(LR, pre=({"data.standardize": True, "data.preprocess": "none"},
                           {"data.standardize": False, "data.preprocess": "gcn_zca"})),
        full_axes={"standardize": ({"data.standardize": True},)})
    with pytest.raises(InputError, match="config.data.standardize"):
        sweep.run(c, tmp_path / "w", build=lambda cfg: pytest.fail("no data is loaded"),
                  log=lambda m: None)
    assert not (tmp_path / "w").exists()


def test_a_pretraining_batch_the_devices_cannot_split_is_refused_before_ready(tmp_path,
                                                                             monkeypatch):
    """A sweep that pretrains stacks (an arm other than random) is refused before its
    workdir changes on a machine whose device count does not divide the pretraining batch;
    the random arm alone pretrains nothing and goes on."""
    from scae.train import parallel

    monkeypatch.setattr(parallel, "num_devices", lambda: 3)
    monkeypatch.setattr(finetuning, "run_cell", fake_rows)
    c = small_data_config(tmp_path, arms=("random", "pretrained"))
    w, ready = tmp_path / "w", []
    with pytest.raises(InputError, match="pretrain.batch_size: .* does not split over 3"):
        sweep.run(c, w, build=lambda cfg: inputs_lib.build(cfg.data, cfg.seed),
                  log=lambda m: None, ready=lambda: ready.append(1))
    assert ready == [] and not w.exists()
    c.sweep.arms = ("random",)
    assert sweep.run(c, tmp_path / "w2", build=lambda cfg: inputs_lib.build(cfg.data, cfg.seed),
                     log=lambda m: None)
