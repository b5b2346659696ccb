"""The code a record was made by: the commit and dirty-tree flag of machine.json and of every
run record (provenance.git_state), never failing without git, and publish refusing records
of a dirty tree unless told otherwise (provenance.check_clean)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import publish
from scae import provenance

GIT = shutil.which("git")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_git_state_of_a_checkout_clean_then_dirty(tmp_path):
    pkg = tmp_path / "scae"
    pkg.mkdir()
    (pkg / "provenance.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "scae/provenance.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "untracked.jsonl").write_text("{}\n")  # a workdir: not dirt
    assert provenance.git_state(pkg) == {"git_commit": head, "git_dirty": False}
    (pkg / "provenance.py").write_text("x = 2\n")
    assert provenance.git_state(pkg) == {"git_commit": head, "git_dirty": True}


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_a_command_names_the_code_it_started_with(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_PINNED", {})
    pkg = tmp_path / "scae"
    pkg.mkdir()
    (pkg / "provenance.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("numbers\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "scae/provenance.py", "README.md")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    clean = {"git_commit": head, "git_dirty": False}
    # Prose and results edited while a run goes on are not its code.
    (tmp_path / "README.md").write_text("other numbers\n")
    assert provenance.git_state(pkg) == clean
    # Pinned as the command starts: edits to the code after that are not what it runs.
    assert provenance.pin_git_state(pkg) == clean
    (pkg / "provenance.py").write_text("x = 2\n")
    assert provenance.git_state(pkg) == clean
    assert provenance.pin_git_state(pkg) == {"git_commit": head, "git_dirty": True}


def test_git_state_outside_a_checkout_and_without_git(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_PINNED", {})  # a command run earlier in this process
    pkg = tmp_path / "scae"
    pkg.mkdir()
    assert provenance.git_state(pkg) == {"git_commit": None, "git_dirty": None}

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_state() == {"git_commit": None, "git_dirty": None}


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_this_checkout_names_its_commit():
    state = provenance.git_state()
    assert len(state["git_commit"]) == 40 and isinstance(state["git_dirty"], bool)


def test_machine_record_carries_the_commit(monkeypatch):
    monkeypatch.setattr(provenance, "git_state",
                        lambda: {"git_commit": "a" * 40, "git_dirty": False})
    m = provenance.machine(1.0, "cmd")
    assert m["git_commit"] == "a" * 40 and m["git_dirty"] is False


def test_check_clean():
    clean = {"git_commit": "a" * 40, "git_dirty": False}
    dirty = {"git_commit": "b" * 40, "git_dirty": True}
    provenance.check_clean([clean, {}, {"git_dirty": None}])  # old records pass
    with pytest.raises(ValueError, match=r"1 record\(s\).*uncommitted.*b{40}.*--allow_dirty"):
        provenance.check_clean([clean, dirty])
    provenance.check_clean([clean, dirty], allow_dirty=True)


def test_publish_refuses_a_workdir_made_from_a_dirty_tree(tmp_path):
    work = tmp_path / "w"
    (work / "compare").mkdir(parents=True)
    (work / "config.json").write_text("{}")
    run = {"dataset": "mnist", "label_size": 100, "arm": "random", "seed": 0,
           "test_error": 9.0, "git_commit": "c" * 40, "git_dirty": True}
    (work / "compare" / "runs.jsonl").write_text(json.dumps(run) + "\n")
    out = tmp_path / "results" / "x"
    with pytest.raises(ValueError, match="uncommitted"):
        publish.publish(work, out)
    assert not out.exists()  # nothing written
    written = publish.publish(work, out, allow_dirty=True)
    assert out / "runs.jsonl" in written
    assert "git_dirty" in (out / "runs.csv").read_text().splitlines()[0]


def test_publish_refuses_a_sweep_made_from_a_dirty_tree(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "config.json").write_text("{}")
    point = {"point_id": "p", "point": {}, "val_error": [9.0], "git_commit": "d" * 40,
             "git_dirty": True}
    (work / "sweep.jsonl").write_text(json.dumps(point) + "\n")
    out = tmp_path / "results" / "x"
    with pytest.raises(ValueError, match="uncommitted"):
        publish.publish(work, out)
    assert not out.exists()
