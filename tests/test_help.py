"""Every command's --help (short: what it does and writes, its flags, the config files and
their presets, an example; exit 0), the config's keys with --config, and the one-line answer
to a mistyped config key."""

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
    runs = {c: (c, "--help") for c in COMMANDS}
    runs["compare --config=configs/mnist.py:quick"] = ("compare", "--config=configs/mnist.py:quick",
                                                       "--help")
    procs = {name: start(*args) for name, args in runs.items()}
    return {c: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for c, p in procs.items()}


def test_the_commands_are_found():
    assert {"pretrain", "compare", "visualize", "filters", "publish", "benchmark"} <= set(COMMANDS)
    assert {"pretrain", "compare", "visualize", "filters"} <= set(CONFIG_COMMANDS)


def shown_flags(out: str) -> list[str]:
    """The names of the flags the help lists."""
    block = out.split("\nflags:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^  --(?:\[no\])?(\w+)", block, re.M)


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
    flags = shown_flags(out)
    assert "help" in flags
    own = re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source)
    for name in own:  # every flag of the command itself, and nothing of absl's
        assert name in flags, name
    assert "--logtostderr" not in out and "--only_check_args" not in out
    # of pipelines.common's flags, exactly those the command reads
    shared = usage.shared_flags(command)
    assert [f for f in flags if f in usage.SHARED and f not in own] == list(shared)
    for name in set(usage.SHARED) - set(shared) - set(own):
        assert f"--{name}" not in out.split("\n\n", 1)[0], name  # nor in the usage line
    assert "exit status: 0 done; 2 bad input" in out
    assert "74 a write failed" in out and "130 / 143" in out
    # short: no config key listing without a named config, each config file once
    assert len(out.splitlines()) <= 60, len(out.splitlines())
    assert "config keys of" not in out
    if "config" in shared:
        block = out.split("\nconfig files (", 1)[1].split("\n\n", 1)[0]
        entries = re.findall(r"^  (configs/\S+\.py)", block, re.M)
        assert entries == sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.py")
                                 if not p.name.startswith("_"))
        # each file's presets once, in its entry, and nowhere else
        assert " ".join(block.split()).count("Presets: smoke, quick (default), paper.") == len(
            [p for p in (ROOT / "configs").glob("*.py")
             if usage.config_presets(p) == ("smoke", "quick", "paper")])
        assert out.count("Presets:") == block.count("Presets:")
        assert out.count("smoke, quick") == block.count("smoke, quick")
        assert re.search(r"--config=configs/\w+\.py(:\w+)? --help lists every key",
                         " ".join(out.split()))


@pytest.mark.parametrize("command", COMMANDS)
def test_the_shared_flags_are_those_the_command_reads(command):
    """usage.SHARED_BY_COMMAND against the command's source: --overwrite where it calls
    common.overwrite(), --config and --workdir where common.run requires them."""
    source = (ROOT / "pipelines" / f"{command}.py").read_text()
    shared = usage.shared_flags(command)
    assert ("overwrite" in shared) == ("common.overwrite()" in source)
    if "needs_config=False" not in source:
        assert "config" in shared
    if "needs_workdir=False" not in source:
        assert "workdir" in shared


def test_benchmark_shows_no_flag_that_does_nothing_there(helps):
    out = helps["benchmark"][1]
    assert out.splitlines()[0] == "usage: python -m pipelines.benchmark [flags]"
    for name in ("--workdir", "--config", "--overwrite", "config files"):
        assert name not in out, name


def test_compare_names_the_summarys_paired_test(helps):
    out = helps["compare"][1]
    assert "Welch" not in out
    assert re.search(r"paired by seed, with its 95% CI and paired t-test p", out)


def test_a_key_comment_stays_on_its_row():
    """model.conv_impl's comment goes on below its line; the next key keeps only its own."""
    rows = "\n".join(usage.config_lines(configs.mnist.get_config("smoke")))
    conv = rows.split("  model.conv_impl = ", 1)[1].split("\n  model.compute_dtype", 1)[0]
    assert " ".join(conv.split()).endswith("'auto': winograd on CPU, xla elsewhere.")
    dtype = rows.split("  model.compute_dtype = 'float32'", 1)[1].split("\n  model.", 1)[0]
    assert dtype.split()[:3] == ["Matmul", "operand", "dtype:"]
    assert "winograd on CPU" not in dtype


def test_help_with_a_config_lists_its_keys_with_their_values(helps):
    status, out, err = helps["compare --config=configs/mnist.py:quick"]
    assert status == 0, err
    quick = configs.mnist.get_config("quick")
    assert "config keys of configs/mnist.py:quick" in out
    assert f"  compare.num_seeds = {quick.compare.num_seeds}" in out
    assert f"  pretrain.epochs = {tuple(quick.pretrain.epochs)!r}" in out
    # the meaning; scae.data.load is the public name of scae.data.sources.load
    assert re.search(r"^  data\.source = 'mnist' +see scae\.data\.(sources\.)?load", out, re.M)
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
    assert usage.default_preset(ROOT / "configs" / "cifar10.py") == "quick"
    assert usage.config_presets(ROOT / "configs" / "cifar10_sweep.py") == ("arms", "random")
    assert usage.default_preset(ROOT / "configs" / "cifar10_sweep.py") == "arms"
