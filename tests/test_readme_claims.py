"""What the README says around its generated blocks: how far the quick job's numbers carry to
another CPU, the GPU example's CIFAR-10 source, and the API's preset default."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from scae import api

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_quick_jobs_numbers_say_where_they_are_bit_exact():
    quick = section("Quick start")
    prose = " ".join(quick.split("<!-- /scae:expected:mnist_quick -->", 1)[1].split())
    assert "bit for bit on the same kind of CPU" in prose
    assert "within the seeds' spread" in prose
    # the measurement issue 34 reports, on an AVX2 CPU
    assert ("AVX2 CPU the same job printed random 6.34 ± 0.60 %, pretrained 5.54 ± 0.54 %, "
            "frozen 8.25 ± 0.36 %") in prose
    # the block it is set against is publish's: the prose names its CPU kind but does not
    # copy its numbers, which a republish would leave behind
    block = quick.split("<!-- scae:expected:mnist_quick -->", 1)[1].split("<!--", 1)[0]
    assert "avx512f" in block and "AVX-512 CPU" in prose
    got = re.findall(r"(random|pretrained|frozen) (\d+\.\d+ ± \d+\.\d+) %", block)
    assert len(got) == 3
    for _, value in got:
        assert value not in prose, value


def test_the_gpu_example_reads_the_official_cifar10_archive():
    gpu = section("The paper protocol on a GPU")
    command = gpu.split("```bash", 1)[1].split("```", 1)[0]
    assert "--config.data.source=cifar:/path/cifar-10-python.tar.gz" in command
    assert "jpeg" not in command.lower() and "folder:" not in command


def test_the_readme_gives_the_apis_preset_default():
    default = inspect.signature(api.pretrain).parameters["preset"].default
    python = " ".join(section("Use from Python").split())
    assert f'scae.pretrain(images, config=None, *, preset="{default}",' in python
    assert f"The preset is `{default}` unless named" in python


def test_the_readme_and_the_reliability_doc_list_every_neutral_key():
    """The keys a rerun accepts as the same experiment are listed where users read them."""
    from scae import workdir

    for doc in ("README.md", "docs/reliability.md"):
        text = (ROOT / doc).read_text()
        missing = [k for k in sorted(workdir.NEUTRAL) if f"`{k}`" not in text]
        assert not missing, (doc, missing)
