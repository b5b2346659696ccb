"""The layering (docs/architecture.md) and the style and dead-code checks run in the test
command: import-linter's contracts, ruff and vulture, as configured in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": str(BIN)})


def test_the_import_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout or "broken" not in out.stdout.split("Contracts:")[-1]


def test_an_upward_import_breaks_the_contracts(tmp_path):
    for part in ("scae", "pipelines"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    optim = tmp_path / "scae" / "train" / "optim.py"
    optim.write_text(optim.read_text() + "\nfrom scae.study import compare  # noqa\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "scae.train.optim -> scae.study.compare" in out.stdout, out.stdout[-3000:]


def test_ruff_finds_nothing():
    out = subprocess.run([_tool("ruff"), "check", "--no-cache", "scae", "pipelines", "tests",
                          "configs"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_vulture_finds_no_dead_code():
    out = subprocess.run([_tool("vulture")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
