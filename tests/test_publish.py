"""The committed tables and README blocks are what pipelines.publish writes from the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted(p.parent for p in (ROOT / "results").glob("*/runs.jsonl"))


@pytest.mark.parametrize("readme", publish.READMES)
def test_readme_blocks_are_what_publish_writes(readme):
    text = (ROOT / readme).read_text()
    assert "<!-- scae:" in text
    assert publish.fill(text, ROOT / "results") == text, (
        f"{readme}: a result block differs from the committed records; run "
        f"python -m pipelines.publish --readmes_only")


def test_readme_has_the_quick_job_block():
    assert "<!-- scae:expected:mnist_quick -->" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("folder", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_tables_are_what_publish_writes(folder):
    for name, text in publish.tables(folder).items():
        assert (folder / name).read_text() == text, f"{folder / name}: rerun pipelines.publish"


def runs(sizes=(1000,), arms=("random", "pretrained", "frozen"), seeds=(0, 1, 2)):
    errors = {"random": 6.3, "pretrained": 5.7, "frozen": 8.5}
    return [{"dataset": "mnist", "label_size": s, "arm": a, "seed": k,
             "test_error": errors[a] + 0.2 * k + (0.05 * k if a == "pretrained" else 0),
             "curve": [[1, 10.0]], "stack_seed": None if a == "random" else 0}
            for s in sizes for a in arms for k in seeds]


def write_folder(folder: Path, rows, config=None, machine=None) -> Path:
    folder.mkdir(parents=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps(config or {}))
    if machine:
        (folder / "machine.json").write_text(json.dumps(machine))
    return folder


MACHINE = {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_vector_flags": ["avx2"], "jax": "0.10.2",
           "devices": ["1 x cpu"], "wall_time_s": 536.4}
README = """# x

before
<!-- scae:expected:mnist_quick -->
old text, typed by hand
<!-- /scae:expected:mnist_quick -->
between
<!-- scae:table:mnist_paper -->
<!-- /scae:table:mnist_paper -->
<!-- scae:machine:mnist_paper -->
stale
<!-- /scae:machine:mnist_paper -->
after
"""


def test_blocks_pending_then_filled(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    text = publish.fill(README, results)
    assert text.startswith("# x\n\nbefore\n<!-- scae:expected:mnist_quick -->\n")
    assert "\nbetween\n" in text and text.endswith("<!-- /scae:machine:mnist_paper -->\nafter\n")
    assert "old text" not in text and "stale" not in text
    assert ("Expected output: pending (no committed record yet). To produce it: "
            "`python -m pipelines.compare --config=configs/mnist.py:quick "
            "--workdir=runs/mnist_quick && python -m pipelines.publish") in text
    assert "Pending: no finished runs in `results/mnist_paper` yet." in text
    assert "Hardware and wall time not recorded" in text
    assert publish.fill(text, results) == text  # idempotent

    write_folder(results / "mnist_quick", runs(), machine=MACHINE)
    config = {"compare": {"label_sizes": [1000, 10000], "num_seeds": 3,
                          "arms": ["random", "pretrained", "frozen"]}}
    write_folder(results / "mnist_paper", runs(seeds=(0, 1)) + runs(sizes=(10000,), seeds=(0,)),
                 config=config, machine=MACHINE)
    filled = publish.fill(text, results)
    quick = filled.split("<!-- scae:expected:mnist_quick -->\n")[1].split("\n<!--")[0]
    assert quick.startswith("Expected output (`results/mnist_quick`, 3 seeds; mean ± std over "
                            "seeds): at 1,000 labels: random 6.50 ± 0.20 %, pretrained 5.95 ± "
                            "0.25 %, frozen 8.70 ± 0.20 % test error; pretrained − random "
                            "−0.55 points (paired over 3 seeds: 95% CI −0.67 to −0.43, "
                            "p = 0.00274). ")
    assert quick.endswith("Measured on AMD EPYC (2 cores; avx2), jax 0.10.2 on 1 x cpu, "
                          "8 min 56 s wall time.")
    table = filled.split("<!-- scae:table:mnist_paper -->\n")[1].split("\n<!--")[0]
    assert "| 1,000 |" in table and "| 10,000 |" in table
    assert table.endswith("Pending (no finished runs yet; rerun the command to continue): "
                          "1,000 labels random (2 of 3 seeds); 1,000 labels pretrained "
                          "(2 of 3 seeds); 1,000 labels frozen (2 of 3 seeds); 10,000 labels "
                          "random (1 of 3 seeds); 10,000 labels pretrained (1 of 3 seeds); "
                          "10,000 labels frozen (1 of 3 seeds).")
    assert "One stack shared by every seed" in table
    assert "Measured on AMD EPYC" in filled.split("<!-- scae:machine:mnist_paper -->")[1]


def test_machine_text():
    assert publish.machine_text(dict(MACHINE, wall_time_s=7300)).endswith(
        "on 1 x cpu, 2 h 01 min wall time.")
    assert "resumed" in publish.machine_text(dict(MACHINE, resumed=True))
    assert publish.machine_text({}).startswith("Hardware and wall time not recorded")


def test_unknown_block_is_refused(tmp_path):
    with pytest.raises(ValueError, match="README block 'summary:x'"):
        publish.fill("<!-- scae:summary:x -->\n<!-- /scae:summary:x -->", tmp_path)


def test_publish_copies_records_and_writes_tables(tmp_path):
    work = tmp_path / "w"
    (work / "compare").mkdir(parents=True)
    (work / "pretrain" / "seed1").mkdir(parents=True)
    (work / "config.json").write_text("{}")
    (work / "machine.json").write_text(json.dumps(MACHINE))
    (work / "compare" / "runs.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in runs()))
    for d, v in (("pretrain", 0.01), ("pretrain/seed1", 0.02)):
        (work / d / "metrics.jsonl").write_text(json.dumps({"layer": 1, "epoch": 1,
                                                            "val_mse": v}) + "\n")
    out = tmp_path / "results" / "quick"
    written = publish.publish(work, out)
    names = sorted(p.name for p in written)
    assert names == ["config.json", "machine.json", "metrics.jsonl", "metrics_seed1.jsonl",
                     "runs.csv", "runs.jsonl", "summary.csv", "summary.md"]
    md = (out / "summary.md").read_text()
    assert "mean ± std over 2 stacks): layer 1 0.015 ± 0.0071" in md
    assert publish.tables(out)["summary.md"] == md
    with pytest.raises(FileNotFoundError):
        publish.publish(tmp_path / "nothing", out)
