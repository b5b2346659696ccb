"""The console scripts of pyproject.toml resolve to entry points that run their command as
``python -m pipelines.<command>`` does: the same help, the same exit statuses."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("pretrain", "compare", "visualize", "filters", "sweep", "publish", "encode",
            "benchmark")


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_has_a_console_script_that_resolves():
    assert sorted(scripts()) == sorted(f"scae-{c}" for c in COMMANDS)
    for name, target in scripts().items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
        command = name.removeprefix("scae-")
        source = (ROOT / "pipelines" / f"{command}.py").read_text()
        assert 'if __name__ == "__main__":\n    common.run(' in source, command


@pytest.mark.parametrize("args", [["--help"], ["--bogus_flag"]])
def test_a_console_script_answers_as_python_dash_m(args):
    script = (f"import sys; sys.argv = ['scae-encode', *{args!r}]; "
              f"from pipelines import scripts; scripts.encode()")
    ours = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True)
    module = subprocess.run([sys.executable, "-m", "pipelines.encode", *args], cwd=ROOT,
                            capture_output=True, text=True)
    assert ours.returncode == module.returncode == (0 if args == ["--help"] else 2)
    assert ours.stdout == module.stdout
    assert ours.stderr.splitlines()[-1:] == module.stderr.splitlines()[-1:]
    assert (ours.stdout if args == ["--help"] else ours.stderr).strip()
