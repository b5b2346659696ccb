"""Every command's --help (what it does and writes, flags, presets, config keys, an example;
exit 0) and the one-line answer to a mistyped config key."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import configs.mnist
from pipelines import usage

ROOT = Path(__file__).resolve().parents[1]
# Every module of pipelines/ that runs as a command, so a new command is covered too.
COMMANDS = sorted(p.stem for p in (ROOT / "pipelines").glob("*.py")
                  if 'if __name__ == "__main__"' in p.read_text())
CONFIG_COMMANDS = [c for c in COMMANDS
                   if "common.run(" in (ROOT / "pipelines" / f"{c}.py").read_text()]


def start(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"pipelines.{module}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str, str]]:
    """(exit status, stdout, stderr) of ``--help`` of every command, run side by side."""
    procs = {c: start(c, "--help") for c in COMMANDS}
    return {c: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for c, p in procs.items()}


def test_the_commands_are_found():
    assert {"pretrain", "compare", "visualize", "filters", "publish", "benchmark"} <= set(COMMANDS)
    assert {"pretrain", "compare", "visualize", "filters"} <= set(CONFIG_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(helps, command):
    status, out, err = helps[command]
    assert status == 0, err[-2000:]
    assert "Traceback" not in err and "Try --helpfull" not in out
    assert out.startswith(f"usage: python -m pipelines.{command} ")
    source = (ROOT / "pipelines" / f"{command}.py").read_text()
    doc = ast.get_docstring(ast.parse(source)).split("\n")[0]
    assert doc.replace("``", "") in out  # what it does
    assert f"  python -m pipelines.{command} --" in out  # an example
    flags = out.split("\nflags:\n", 1)[1]
    assert re.search(r"^  --help ", flags, re.M)
    own = re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source)
    for name in own:  # every flag of the command itself, and nothing of absl's
        assert re.search(rf"^  --(\[no\])?{name}\b", flags, re.M), name
    assert "--logtostderr" not in out and "--only_check_args" not in out
    assert "exit status: 0 done; 2 bad input" in out
    if command in CONFIG_COMMANDS:
        for name in ("config", "workdir", "overwrite"):
            assert re.search(rf"^  --(\[no\])?{name}\b", flags, re.M), name
        assert "configs/mnist.py" in out and "Presets: smoke, quick, paper." in out
        assert "config keys" in out
        assert "74 a write failed" in out and "130 / 143" in out


def test_help_lists_the_example_configs_keys_with_their_defaults(helps):
    out = helps["compare"][1]
    quick = configs.mnist.get_config("quick")
    assert "config keys of configs/mnist.py:quick" in out
    assert f"  compare.num_seeds = {quick.compare.num_seeds}" in out
    assert f"  pretrain.epochs = {tuple(quick.pretrain.epochs)!r}" in out
    assert re.search(r"^  data\.source = 'mnist' +see scae\.data\.load", out, re.M)  # meaning
    assert "quick  - the README's main job" in out  # the presets, from the config file


def test_help_with_a_config_lists_it_resolved(tmp_path):
    p = start("pretrain", "--config=configs/cifar10.py:smoke", "--config.pretrain.epochs=(2,3,4)",
              "--help", f"--workdir={tmp_path / 'w'}")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "config keys of configs/cifar10.py:smoke" in out
    assert "  pretrain.epochs = (2, 3, 4)" in out and "  dataset = 'cifar10'" in out
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override,key,suggestion", [
    ("--config.pretrain.epochz=3", "--config.pretrain.epochz", "--config.pretrain.epochs?"),
    ("--config.modle.features=(4,4,4)", "--config.modle.features", "--config.model.features?"),
])
def test_a_mistyped_key_is_one_line_with_the_nearest_keys(tmp_path, override, key, suggestion):
    p = start("pretrain", "--config=configs/mnist.py:smoke", override, f"--workdir={tmp_path}/w")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"error: {key}: no such config key; did you mean {suggestion} "
                     f"(--config=configs/mnist.py:smoke --help lists every key)"], err
    assert not (tmp_path / "w").exists()


def test_closest_keys():
    c = configs.mnist.get_config("smoke")
    assert usage.closest_keys(c, "pretrain.epochz") == ["pretrain.epochs"]
    assert usage.closest_keys(c, "modle.features") == ["model.features"]
    assert usage.closest_keys(c, "data.sourse") == ["data.source"]
    assert usage.closest_keys(c, "finetune.lerning_rate") == ["finetune.learning_rate"]
    assert sorted(usage.closest_keys(c, "epochs")) == ["finetune.epochs", "pretrain.epochs"]
    assert usage.closest_keys(c, "pretrain.epochs.x") == ["pretrain.epochs"]
    assert usage.closest_keys(c, "xyzzy") == []
    assert usage.missing_key(c, ["p", "--config.seed=1", "--config.data.sourse=x"]) == \
        "data.sourse"
    assert usage.missing_key(c, ["p", "--config.seed=1"]) is None


def test_split_help():
    assert usage.split_help(["p", "--help", "--workdir=w", "-h"]) == (["p", "--workdir=w"], True)
    assert usage.split_help(["p", "--workdir=w"]) == (["p", "--workdir=w"], False)
    assert usage.config_presets(ROOT / "configs" / "cifar10.py") == ("smoke", "quick", "paper")
