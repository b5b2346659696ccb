"""Commands re-execute themselves with glibc's huge-page tunable (pipelines.common)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import common

ROOT = Path(__file__).resolve().parents[1]
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _available() -> bool:
    import platform
    libc, version = platform.libc_ver()
    return (sys.platform == "linux" and libc == "glibc"
            and tuple(map(int, version.split(".")[:2])) >= (2, 35)
            and _THP.exists() and "[never]" not in _THP.read_text())


def test_the_environment_adds_the_tunable_once(monkeypatch):
    monkeypatch.delenv("SCAE_HUGE_PAGES", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    env = common.huge_pages_env()
    if not _available():
        assert env is None
        return
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4:" + common.HUGE_PAGES_TUNABLE
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4"  # not changed here
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    assert common.huge_pages_env() is None  # already on: no second exec
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("SCAE_HUGE_PAGES", "0")
    assert common.huge_pages_env() is None


@pytest.mark.skipif(not _available(), reason="needs glibc >= 2.35 and transparent huge pages")
def test_a_command_runs_with_the_tunable_and_its_own_pid():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SCAE_HUGE_PAGES")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.benchmark", "--help"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = ""
        for _ in range(200):  # the exec keeps the PID; its environment changes
            try:
                seen = (Path(f"/proc/{proc.pid}/environ").read_bytes()).decode(errors="replace")
            except OSError:
                break
            if common.HUGE_PAGES_TUNABLE in seen:
                break
            time.sleep(0.02)
        assert common.HUGE_PAGES_TUNABLE in seen
    finally:
        assert proc.wait(timeout=120) == 0
