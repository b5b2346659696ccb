"""results/ holds records, figures and their READMEs, no code (docs/architecture.md): what made
a record is a command under pipelines/, or a script named by the commit that has it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".sh", ".ipynb"}


def test_results_hold_no_code():
    assert [p for p in (ROOT / "results").rglob("*") if p.suffix in CODE_SUFFIXES] == []


def test_the_commands_the_records_name_exist():
    texts = [ROOT / "docs" / "performance.md", *sorted((ROOT / "results").glob("*/README.md"))]
    named = {m for path in texts
             for m in re.findall(r"python -m\s+pipelines\.(\w+)", path.read_text())}
    assert {"benchmark", "quick_job", "gpu_run"} <= named
    assert {m for m in named if not (ROOT / "pipelines" / f"{m}.py").is_file()} == set()
