"""Published stacks: `publish --stack` writes a workdir's stack with its transform and record,
and each committed stack (results/pretrained/) still gives its recorded validation MSE."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scae
from scae import api
from scae import data as data_lib
from scae import workdir as workdir_lib
from scae.data import inputs, splits
from scae.study import pretrain as pretraining

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.heavy
@pytest.mark.slow
def test_publish_stack_writes_a_stack_that_loads_and_keeps_its_mse(tmp_path):
    w, out = tmp_path / "w", tmp_path / "pub"
    proc = _run("pipelines.pretrain", "--config=configs/mnist.py:smoke",
                "--config.data.scale=symmetric", f"--workdir={w}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run("pipelines.publish", "--stack", f"--workdir={w}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "stack_record.json").read_text())
    stack = scae.load_stack(out)
    assert stack.normalizer is not None and stack.normalizer.scale == "symmetric"
    config = _config(out)
    data = inputs.build(config.data, config.seed)
    val = data.val_images[: record["val_images"]]
    np.testing.assert_allclose(pretraining.validation_mse(stack, val), record["val_mse"],
                               rtol=1e-6)
    # The same numbers pretraining recorded after each layer's last epoch.
    np.testing.assert_allclose(record["val_mse"], record["trained_val_mse"], rtol=1e-3)
    again = _run("pipelines.publish", "--stack", f"--workdir={tmp_path / 'none'}",
                 f"--out={tmp_path / 'x'}")
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr


def _config(folder: Path):
    return workdir_lib.load_config(folder)


@pytest.mark.parametrize("name", sorted(api.PUBLISHED))
def test_a_committed_stack_gives_its_recorded_validation_mse(name):
    folder = api.RESULTS / api.PUBLISHED[name]
    if not (folder / "stack_record.json").is_file():
        pytest.skip(f"no published {name} stack in {folder}")
    record = json.loads((folder / "stack_record.json").read_text())
    config = _config(folder)
    source = config.data.source
    path = source.split(":", 1)[1] if ":" in source else None
    if path and not Path(path).exists():
        pytest.skip(f"its data ({source}) is not on this machine")
    stack = scae.load_stack(name)
    # The validation images as the workdir carved them, through the stack's own transform (the
    # one fitted on the training images, which the stack carries: nothing is fitted here).
    train = data_lib.load(source, "train")
    _, val_idx = splits.validation_split(len(train), config.data.validation_size)
    val = stack.normalizer(train.images[val_idx][: record["val_images"]])
    # Bit-exact on the CPU kind that made it; within float rounding elsewhere.
    np.testing.assert_allclose(pretraining.validation_mse(stack, val), record["val_mse"],
                               rtol=2e-3)


def test_the_readme_loads_the_published_stack_and_encodes_without_training(capsys):
    if not (api.RESULTS / api.PUBLISHED["mnist"] / "stack.json").is_file():
        pytest.skip("no published mnist stack")
    section = (ROOT / "README.md").read_text().split("## Use from Python", 1)[1]
    code = next(c for c in re.findall(r"```python\n(.*?)```", section, re.S)
                if 'load_stack("mnist")' in c)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert "(500, 2, 2, 200)" in capsys.readouterr().out
    assert namespace["rebuilt"].shape == (8, 28, 28, 1)  # back in image space


def test_a_misspelt_published_name_is_one_line_that_names_the_published_ones():
    with pytest.raises(scae.InputError) as e:  # the API's error, exported beside it
        scae.load_stack("mnst")
    message = str(e.value)
    assert "\n" not in message and "did you mean 'mnist'?" in message
    assert all(name in message for name in api.PUBLISHED)
