"""The declared dependencies are honest: each is imported by the library, and everything the
library imports outside the standard library is declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Distribution name -> the module it is imported as, where the two differ.
MODULES = {"absl-py": "absl", "ml-collections": "ml_collections", "pillow": "PIL",
           "orbax-checkpoint": "orbax", "tensorflow-datasets": "tensorflow_datasets",
           "tensorboardx": "tensorboardX"}


def _imported_top_level() -> set[str]:
    names = set()
    for folder in ("scae", "pipelines", "configs"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_declared_dependencies_are_used_and_used_ones_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {MODULES.get(n, n.replace("-", "_"))
                for n in (re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower()
                          for d in project["dependencies"])}
    imported = _imported_top_level() - set(sys.stdlib_module_names) - {"scae", "pipelines",
                                                                       "configs", "__future__"}
    assert imported - declared == set(), "imported but not declared"
    assert declared - imported == set(), "declared but not imported"


def test_every_command_imports_in_one_process():
    """absl flags are global: two commands defining the same flag name break any process (a
    test session, a notebook) that imports both."""
    import importlib

    for path in sorted((ROOT / "pipelines").glob("*.py")):
        importlib.import_module(f"pipelines.{path.stem}")
