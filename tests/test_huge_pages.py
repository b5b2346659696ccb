"""Commands re-execute themselves with glibc's huge-page tunable (pipelines.common)."""

import fcntl
import os
import subprocess
import sys
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
        pytest.skip("needs glibc >= 2.35 and transparent huge pages")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4:" + common.HUGE_PAGES_TUNABLE
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4"  # not changed here
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    assert common.huge_pages_env() is None  # already on: no second exec
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("SCAE_HUGE_PAGES", "0")
    assert common.huge_pages_env() is None


@pytest.mark.skipif(not _available(), reason="needs glibc >= 2.35 and transparent huge pages")
def test_a_command_runs_with_the_tunable_and_its_own_pid():
    """The command's environment is read while it is held alive at an event, not polled
    against a clock: its help text (with a config: every key) is longer than a one-page pipe,
    so after the exec (which
    happens when the command starts, before its flags are read) it blocks writing to that pipe
    until the test reads it."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SCAE_HUGE_PAGES")}
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    # With a config, --help lists every key: several pages.
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.compare", "--help",
                             "--config=configs/mnist.py:paper"], cwd=ROOT,
                            env=env, stdout=write, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read, "rb", buffering=0) as out:  # unbuffered: read(1) takes one byte
        try:
            first = out.read(1)  # the command is writing its help: it runs after the exec
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
            rest = b"".join(iter(lambda: out.read(65536), b""))
        finally:
            code = proc.wait(timeout=120)
    assert code == 0 and len(first + rest) > 4096
    assert any(v.startswith("GLIBC_TUNABLES=") and common.HUGE_PAGES_TUNABLE in v
            for v in environ.split("\0"))
