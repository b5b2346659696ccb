"""Console-script entry points (``[project.scripts]`` in pyproject.toml): ``scae-compare``
and the others run their command as ``python -m pipelines.compare`` does, as the module
``__main__``, so that its flags, ``--help`` text (the module docstring) and start-up (signals,
huge pages) are the same either way."""

from __future__ import annotations

import runpy


def _run(command: str) -> None:
    runpy.run_module(f"pipelines.{command}", run_name="__main__", alter_sys=True)


def pretrain() -> None:
    _run("pretrain")


def compare() -> None:
    _run("compare")


def visualize() -> None:
    _run("visualize")


def filters() -> None:
    _run("filters")


def sweep() -> None:
    _run("sweep")


def publish() -> None:
    _run("publish")


def encode() -> None:
    _run("encode")


def benchmark() -> None:
    _run("benchmark")
