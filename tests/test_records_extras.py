"""machine.json over several sessions (provenance.session_record, publish.machine_text), refit
cells named and compared to the paper by the images they trained on, and runs that never
trained (report.failed_runs and the summary's note)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from pipelines import publish
from scae import provenance
from scae.report import stats
from scae.report import tables as report

CMD = "python -m pipelines.compare --config=configs/mnist.py:smoke --workdir=w"


# ---------------------------------------------------------------------------------------------
# session_record and machine_text


def write(path, record):
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def test_first_session(tmp_path):
    r = provenance.session_record(tmp_path / "machine.json", 12.34, CMD, False)
    assert r["sessions"] == 1 and r["resumed"] is False
    assert r["wall_time_s"] == 12.3 and r["total_wall_time_s"] == 12.3
    assert "sessions_unrecorded" not in r
    assert r["command"] == CMD and r["devices_of_sessions"] == r["devices"]


def test_first_session_ignores_a_file_it_was_not_resuming(tmp_path):
    # Not resumed: an existing record (e.g. from before --overwrite) is not added up.
    path = write(tmp_path / "machine.json", provenance.session_record(tmp_path / "x", 50.0, CMD,
                                                                      False))
    r = provenance.session_record(path, 10.0, CMD, False)
    assert r["sessions"] == 1 and r["total_wall_time_s"] == 10.0


def test_resumed_session_adds_up(tmp_path):
    path = tmp_path / "machine.json"
    write(path, provenance.session_record(path, 12.5, CMD, False))
    second = provenance.session_record(path, 20.0, CMD, True)
    assert second["sessions"] == 2 and second["resumed"] is True
    assert second["wall_time_s"] == 20.0 and second["total_wall_time_s"] == 32.5
    assert "sessions_unrecorded" not in second
    write(path, second)
    third = provenance.session_record(path, 7.5, CMD, True)
    assert third["sessions"] == 3 and third["total_wall_time_s"] == 40.0
    text = publish.machine_text(second)
    assert "in 2 sessions" in text and "of the recorded sessions only" not in text
    assert "32 s wall time" in text  # the total, not this session's 20 s
    assert "in 3 sessions" in publish.machine_text(third)
    assert "sessions" not in publish.machine_text(
        provenance.session_record(tmp_path / "none.json", 5.0, CMD, False))


def old_record(wall: float, resumed: bool) -> dict:
    """machine.json as compare wrote it before sessions were added up: no total, no count."""
    return provenance.machine(wall, CMD) | {"resumed": resumed, "cache_entries_at_start": 0}


def test_resumed_without_a_prior_record_is_marked_unrecorded(tmp_path):
    # A resumed job whose earlier sessions left no record (killed, or from before machine.json)
    r = provenance.session_record(tmp_path / "machine.json", 30.0, CMD, True)
    assert r["sessions_unrecorded"] is True and r["sessions"] == 1
    assert r["total_wall_time_s"] == 30.0
    text = publish.machine_text(r)
    assert "(of the recorded sessions only" in text and "in 1 sessions" not in text


def test_old_format_record_of_one_whole_session_is_added_up(tmp_path):
    # An old record of a session that was not itself resumed: its wall time is the whole
    # session before this one.
    path = write(tmp_path / "machine.json", old_record(100.0, resumed=False))
    r = provenance.session_record(path, 20.0, CMD, True)
    assert r["sessions"] == 2 and r["total_wall_time_s"] == 120.0
    assert "sessions_unrecorded" not in r


def test_old_format_record_of_a_resumed_session_is_marked_unrecorded(tmp_path):
    # An old record that was itself resumed counted only its own session: the sessions before
    # it are unknown, so the total stays short and must say so.
    path = write(tmp_path / "machine.json", old_record(100.0, resumed=True))
    assert "(of the recorded sessions only" in publish.machine_text(old_record(100.0, True))
    r = provenance.session_record(path, 20.0, CMD, True)
    assert r["sessions_unrecorded"] is True
    assert r["total_wall_time_s"] == 120.0
    text = publish.machine_text(r)
    assert "(of the recorded sessions only" in text and "sessions (interrupted" not in text


def test_unrecorded_sessions_stay_marked_when_resumed_again(tmp_path):
    path = tmp_path / "machine.json"
    write(path, provenance.session_record(path, 30.0, CMD, True))  # sessions_unrecorded
    r = provenance.session_record(path, 10.0, CMD, True)
    assert r["total_wall_time_s"] == 40.0
    assert r["sessions_unrecorded"] is True
    assert "(of the recorded sessions only" in publish.machine_text(r)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\x00\xff\xfe",
                                     b'{"total_wall_time_s": "soon", "sessions": "x"}'])
def test_corrupt_prior_record_is_treated_as_absent(tmp_path, content):
    path = tmp_path / "machine.json"
    path.write_bytes(content)
    r = provenance.session_record(path, 9.0, CMD, True)
    absent = provenance.session_record(tmp_path / "absent.json", 9.0, CMD, True)
    keys = ("sessions", "total_wall_time_s", "sessions_unrecorded", "devices_of_sessions")
    assert {k: r.get(k) for k in keys} == {k: absent.get(k) for k in keys}
    assert r["sessions"] == 1 and r["total_wall_time_s"] == 9.0


# ---------------------------------------------------------------------------------------------
# Refit cells: named and compared to the paper by the images they trained on


CIFAR = {"dataset": "cifar10", "data_title": "CIFAR-10", "paper_key": "cifar10",
         "data_exact": True, "data_note": "", "data_fingerprint": "f" * 64}


def run(label_size, arm, seed, test_error, *, val_error=None, refit=False, **extra) -> dict:
    """A run record with the fields the report reads (cf. results/cifar10_paper/runs.jsonl)."""
    train_size = 50000 if refit else label_size
    return dict(CIFAR, label_size=label_size, arm=arm, seed=seed, epochs=30, steps=100,
                best_epoch=30, val_error=math.nan if refit else
                (test_error if val_error is None else val_error),
                test_error=test_error, refit_full=refit, train_size=train_size,
                cell_time_s=1.0, seeds_together=3, subset=f"s{label_size}-{seed}",
                lr_scale=1.0, pool_size=45000, stack_seed=seed, curve=[]) | extra


@pytest.fixture
def refit_rows() -> list[dict]:
    errs = {("random", 1000): [45.0, 46.0, 44.0], ("pretrained", 1000): [44.0, 45.5, 43.5],
            ("random", 45000): [23.0, 23.4, 22.6], ("pretrained", 45000): [22.9, 23.1, 22.7]}
    return [run(size, arm, seed, e, refit=size == 45000)
            for (arm, size), es in errs.items() for seed, e in enumerate(es)]


def test_trained_size_and_label_text_of_a_refit_cell(refit_rows):
    assert report.trained_size(45000, refit_rows) == 50000
    assert report.trained_size(1000, refit_rows) == 1000
    assert report.label_text(45000, refit_rows) == "all (50,000)"
    assert report.label_text(1000, refit_rows) == "1,000"
    # The same cell without the refit is named by its labelled pool.
    plain = [dict(r, refit_full=False, train_size=r["label_size"]) for r in refit_rows]
    assert report.trained_size(45000, plain) == 45000
    assert report.label_text(45000, plain) == "all (45,000)"


def _md_row(md: str, label: str) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(f"| {label} |")]
    assert rows, md
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_summary_compares_a_refit_cell_with_the_papers_50k_figures(refit_rows):
    md = report.summary_markdown(refit_rows)
    assert stats.PAPER["cifar10", "random", 50000] == 22.50
    assert stats.PAPER["cifar10", "pretrained", 50000] == 21.80
    row = _md_row(md, "all (50,000)")
    # labels | random | pretrained | paper random | paper CAE | ours − paper
    assert row[3:5] == ["22.50", "21.80"], row
    assert row[1].startswith("23.00 ± 0.40 (3)") and row[2].startswith("22.90 ± 0.20 (3)")
    assert row[5] == f"{report.fmt_signed(23.0 - 22.5)}, {report.fmt_signed(22.9 - 21.8)}"
    assert _md_row(md, "1,000")[3:5] == ["55.52", "52.30"]
    assert "| 45,000 |" not in md and "all (45,000)" not in md
    assert "Refit on every training image" in md
    # The verdict at 50k names the paper's difference there, as transcribed.
    assert ("The paper's difference: " + report.fmt_signed(21.80 - 22.50)) in md
    assert stats.PAPER_CAVEAT in md

    csv_text, md2 = report.summary_texts(refit_rows)
    assert md2.startswith(md)
    lines = list(csv.DictReader(io.StringIO(csv_text)))
    refit = [r for r in lines if r["label_size"] == "45000"]
    assert {r["paper_test_error"] for r in refit} == {"22.5", "21.8"}
    assert {r["labels"] for r in refit} == {"all (50,000)"}


def test_summary_of_a_refit_cell_under_a_legacy_identity(refit_rows):
    # Records from before identities: the config's data set name is taken at its word.
    legacy = [{k: v for k, v in r.items() if not k.startswith(("data_", "paper_key"))}
              for r in refit_rows]
    assert report.data_identity(legacy, "cifar10").paper_key == "cifar10"
    md = report.summary_markdown(legacy, "cifar10")
    assert _md_row(md, "all (50,000)")[3:5] == ["22.50", "21.80"]


# ---------------------------------------------------------------------------------------------
# Runs that never trained


def test_failed_runs_near_chance():
    flagged = run(1000, "random", 0, 89.0, val_error=89.2)
    ok = run(1000, "random", 1, 31.0, val_error=30.0)
    edge = run(1000, "random", 2, 88.5, val_error=88.0)  # exactly chance − 2 points
    below = run(1000, "random", 3, 88.5, val_error=87.9)
    assert report.failed_runs([ok, flagged, edge, below]) == [flagged, edge]
    two = run(1000, "random", 4, 49.0, num_classes=2)  # chance 50%
    assert report.failed_runs([two]) == [two]
    assert report.failed_runs([run(1000, "random", 4, 47.9, num_classes=2)]) == []


def test_failed_refit_runs_use_their_test_error():
    bad = run(45000, "random", 0, 89.5, refit=True)
    good = run(45000, "random", 1, 25.0, refit=True)
    assert math.isnan(bad["val_error"]) and math.isnan(good["val_error"])
    assert report.failed_runs([good, bad]) == [bad]


def test_summary_names_the_failed_run_and_the_tests_without_its_seed():
    random = [31.0, 30.0, 32.0, 30.5]
    pretrained = [29.0, 89.0, 30.5, 29.0]  # seed 1 collapsed to one class
    rows = ([run(1000, "random", s, e) for s, e in enumerate(random)]
            + [run(1000, "pretrained", s, e, val_error=89.2 if s == 1 else e)
               for s, e in enumerate(pretrained)])
    _, md = report.summary_texts(rows)
    assert "1 run(s) failed (never trained" in md
    assert "pretrained at 1,000 labels seed 1 (89.20%)" in md
    note = md[md.index("never trained"):]
    without = np.mean([p - r for s, (p, r) in enumerate(zip(pretrained, random)) if s != 1])
    line = [x for x in note.splitlines() if x.startswith("- 1,000 labels, pretrained − random")]
    assert len(line) == 1, note
    assert line[0].split(": ", 1)[1].startswith(report.fmt_signed(without))
    assert "over 3 seeds" in line[0]
    # The failed run stays in the means and tests above the note.
    table = md[:md.index("never trained")]
    assert "| 1,000 | pretrained − random | 4 |" in table
    assert report.failed_runs([r for r in rows if r["seed"] != 1]) == []
    assert "never trained" not in report.summary_texts(
        [r for r in rows if r["seed"] != 1])[1]
