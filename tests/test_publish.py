"""The committed tables and README blocks are what pipelines.publish writes from the records."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from absl import flags

from pipelines import common, publish
from scae import atomic
from scae.errors import InputError

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
    with pytest.raises(InputError, match="not a workdir"):
        publish.publish(tmp_path / "nothing", out)


# --- publish as a command: everything checked before anything is written ---------------------


def _checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout (README.md quoting results/quick, and an earlier result results/old) and a
    finished workdir to publish into results/quick."""
    root = tmp_path / "root"
    write_folder(root / "results" / "old", runs(), {"compare": {}}, MACHINE)
    (root / "README.md").write_text("# r\n<!-- scae:table:quick -->\n<!-- /scae:table:quick -->"
                                    "\n<!-- scae:timings -->\n<!-- /scae:timings -->\n")
    work = tmp_path / "w"
    (work / "compare").mkdir(parents=True)
    (work / "config.json").write_text(json.dumps({"compare": {"label_sizes": [1000],
                                                              "arms": ["random"],
                                                              "num_seeds": 3}}))
    (work / "machine.json").write_text(json.dumps(MACHINE))
    (work / "compare" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs()))
    return root, work


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _publish(capsys, *args: str) -> tuple[int, list[str]]:
    """``python -m pipelines.publish ARGS`` in this process: (status, stderr's lines)."""
    flags.FLAGS.unparse_flags()
    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["pipelines/publish.py", *args]), \
            pytest.raises(SystemExit) as exit_info:
        common.run(publish.main, needs_config=False, needs_workdir=False)
    err = capsys.readouterr().err
    return exit_info.value.code, [line for line in err.splitlines() if line.strip()]


def test_publish_as_a_command(tmp_path):
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    args = [sys.executable, "-m", "pipelines.publish", f"--workdir={work}", f"--out={out}",
            f"--root={root}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "summary.md").is_file() and (out / "runs.jsonl").is_file()
    readme = (root / "README.md").read_text()
    assert "| 1,000 |" in readme or "1000" in readme, readme
    assert "`results/quick`" in readme  # the timings block quotes the new folder
    (work / "config.json").write_text('{"compare": ')  # torn
    before = _files(root)
    torn = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in torn.stderr.splitlines() if line.strip()]
    assert torn.returncode == 2 and len(lines) == 1, torn.stderr[-3000:]
    assert str(work / "config.json") in lines[0] and "not valid JSON" in lines[0]
    assert _files(root) == before


@pytest.mark.parametrize("damage", ["workdir_config", "workdir_runs", "old_config",
                                    "old_machine", "old_runs"])
def test_publish_validates_every_record_before_writing(capsys, tmp_path, damage):
    """A damaged record, in the workdir or in any results/ folder the README refresh reads, is
    one line naming the file, exit 2, and nothing written (the result folder and README.md
    were changed first before, and every later publish failed on the README refresh)."""
    root, work = _checkout(tmp_path)
    path = {"workdir_config": work / "config.json",
            "workdir_runs": work / "compare" / "runs.jsonl",
            "old_config": root / "results" / "old" / "config.json",
            "old_machine": root / "results" / "old" / "machine.json",
            "old_runs": root / "results" / "old" / "runs.jsonl"}[damage]
    path.write_text("{torn\n" + path.read_text() if path.suffix == ".jsonl" else "{torn")
    before = _files(root)
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={root / 'results' / 'quick'}",
                             f"--root={root}")
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(path) in lines[0], lines[0]
    assert _files(root) == before
    assert not [p for p in (root / "results").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["out_is_a_file", "out_under_a_file", "a_file_is_a_folder"])
def test_an_out_that_cannot_be_written_is_refused_before_writing(capsys, tmp_path, case):
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    if case == "out_is_a_file":
        out.write_text("x")
        fragment = "is a file; expected a folder"
    elif case == "out_under_a_file":
        (root / "results" / "f").write_text("x")
        out = root / "results" / "f" / "quick"
        fragment = "which is a file"
    else:
        (out / "summary.md").mkdir(parents=True)
        fragment = "summary.md is a folder"
    before = _files(root)
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert status == 2 and len(lines) == 1 and fragment in lines[0] and "--out" in lines[0], \
        lines
    assert _files(root) == before


def test_publish_during_a_running_compare_is_refused(capsys, tmp_path):
    root, work = _checkout(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from scae import workdir; workdir.lock(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(600)", str(work)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, lines = _publish(capsys, f"--workdir={work}",
                                 f"--out={root / 'results' / 'quick'}", f"--root={root}")
    finally:
        holder.kill()
        holder.wait()
    assert status == 2 and len(lines) == 1 and "in use by a running command" in lines[0], lines
    assert not (root / "results" / "quick").exists()


def test_publish_sweeps_what_a_killed_publish_left(capsys, tmp_path):
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    left = [root / ".README.md.k3j2.tmp", root / "results" / ".quick.publish.tmp" / "runs.csv",
            root / "results" / "old" / ".summary.md.x8.tmp"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    assert not any(p.exists() for p in left)
    assert not (root / "results" / ".quick.publish.tmp").exists()
    with contextlib.suppress(FileNotFoundError):
        assert not atomic.sweep(root / "results")


# --- what is published, where, and what a republish leaves --------------------------------


def _stopped_before_training(work: Path) -> None:
    """What a compare that stopped (exit 2) before anything trained leaves: config.json,
    machine.json and each stage's settings.json, no record."""
    (work / "compare" / "runs.jsonl").unlink()
    (work / "pretrain").mkdir(exist_ok=True)
    for stage in ("compare", "pretrain"):
        (work / stage / "settings.json").write_text("{}")


@pytest.mark.parametrize("kind", ["compare", "partial_compare", "sweep", "filters"])
def test_a_workdir_with_nothing_finished_is_refused(capsys, tmp_path, kind):
    """Nothing trained: one line, exit 2, nothing written (it was published with exit 0, and
    the README timings gained a row for a job that trained nothing). Once the workdir holds
    what its kind finishes (a run record, even one of several cells; a sweep record; the
    filter figure), it is published."""
    root, work = _checkout(tmp_path)
    rows = (work / "compare" / "runs.jsonl").read_text()
    _stopped_before_training(work)
    out = root / "results" / "quick"
    before = _files(root)
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert status == 2 and len(lines) == 1, lines
    assert f"{work}: nothing finished to publish" in lines[0], lines[0]
    assert _files(root) == before and not out.exists()
    assert not [p for p in (root / "results").iterdir() if p.name.startswith(".")]

    if kind in ("compare", "partial_compare"):
        (work / "compare" / "runs.jsonl").write_text(
            rows if kind == "compare" else rows.splitlines(keepends=True)[0])
    elif kind == "sweep":
        sweep_record = (ROOT / "results" / "cifar10_sweep" / "sweep.jsonl").read_text()
        (work / "sweep.jsonl").write_text(sweep_record.splitlines(keepends=True)[0])
    else:
        (work / "filters.png").write_bytes(b"\x89PNG")
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    published = {"compare": "summary.md", "partial_compare": "summary.md",
                 "sweep": "sweep.md", "filters": "filters.png"}[kind]
    assert (out / published).is_file()
    if kind == "partial_compare":  # the cells still to train are marked, as intended
        assert "Pending (no finished runs yet" in (root / "README.md").read_text()


@pytest.mark.parametrize("where", ["outside", "nested", "hidden", "relative_elsewhere"])
def test_an_out_outside_results_is_refused(capsys, tmp_path, monkeypatch, where):
    """--out is a folder results/NAME of the checkout, the only folders the README tables
    quote (a folder anywhere was written, and the README refreshed without it)."""
    root, work = _checkout(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = {"outside": tmp_path / "elsewhere" / "quick",
           "nested": root / "results" / "old" / "quick",
           "hidden": root / "results" / ".quick",
           "relative_elsewhere": Path("results") / "quick"}[where]  # tmp_path/results: not root's
    before = _files(tmp_path)
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert status == 2 and len(lines) == 1, lines
    assert f"--out {out}: expected a folder results/NAME of {root}" in lines[0], lines[0]
    assert _files(tmp_path) == before and not out.exists()


def test_a_republish_replaces_the_folder_whole(capsys, tmp_path):
    """A folder publish wrote is replaced by what the records give now: a planted figure and a
    figure the workdir no longer holds are gone (both survived, beside the new files)."""
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    (work / "compare" / "curves.png").write_bytes(b"\x89PNG")
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    assert (out / "compare_curves.png").is_file()
    (work / "compare" / "curves.png").unlink()
    (out / "old_fig.png").write_bytes(b"\x89PNG")
    (out / ".summary.md.x8.tmp").write_text("x")  # a killed write's leftover, swept
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "machine.json", "runs.csv", "runs.jsonl", "summary.csv", "summary.md"]
    assert not [p for p in (root / "results").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["notes", "subfolder", "not_published", "link"])
def test_an_out_holding_other_files_is_refused(capsys, tmp_path, case):
    """A republish replaces the folder whole, so a folder holding anything publish does not
    write (or one it did not write at all) is refused, naming it, and left as it was."""
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    if case == "notes":
        (out / "notes.txt").write_text("mine")
        fragment = "holds notes.txt, which publish does not write"
    elif case == "subfolder":
        (out / "drafts").mkdir()
        (out / "drafts" / "fig.png").write_bytes(b"\x89PNG")
        fragment = "holds drafts, which publish does not write"
    elif case == "link":
        (tmp_path / "mine.png").write_bytes(b"\x89PNG")
        (out / "linked.png").symlink_to(tmp_path / "mine.png")
        fragment = "holds linked.png, which publish does not write"
    else:
        out = root / "results" / "figures"
        out.mkdir()
        (out / "old_fig.png").write_bytes(b"\x89PNG")
        fragment = "not a folder publish wrote (no config.json)"
    before = _files(root)
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert status == 2 and len(lines) == 1, lines
    assert f"--out {out}: {fragment}" in lines[0], lines[0]
    assert _files(root) == before


def test_a_publish_killed_mid_swap_loses_no_result(capsys, tmp_path):
    """Killed after the old folder is moved aside and before the new one is in place, a
    republish leaves the old one where the next publish puts it back (its sweep of the
    staging folder would otherwise delete it)."""
    root, work = _checkout(tmp_path)
    out = root / "results" / "quick"
    status, lines = _publish(capsys, f"--workdir={work}", f"--out={out}", f"--root={root}")
    assert not status, lines
    published = _files(out)
    real = os.replace

    def killed_before_the_new_folder(src, dst):
        if Path(dst) == out and ".publish" in str(src):
            raise KeyboardInterrupt
        return real(src, dst)

    with mock.patch.object(publish.os, "replace", killed_before_the_new_folder), \
            pytest.raises(KeyboardInterrupt):
        publish.run(work, out, root=root)
    assert not out.exists()  # the moment of the kill: the old folder aside
    status, lines = _publish(capsys, "--readmes_only", f"--root={root}")
    assert not status, lines
    assert _files(out) == published
    assert not [p for p in (root / "results").iterdir() if p.name.startswith(".")]
