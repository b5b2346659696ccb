"""What a reader finds after a command: figures whose axes fit the data and whose random
initialisation is the random arm's real one, and no lock file left in the workdir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from absl import flags
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.lines import Line2D
from test_figures import drawn, records  # noqa: F401 - drawn is a fixture

from scae import workdir as workdir_lib
from scae.errors import InputError
from scae.report import compare_plots as comparison_plots
from scae.report import workdir_figures as figures

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def test_error_vs_labels_spans_the_sizes_that_were_run(drawn, tmp_path):  # noqa: F811
    """A 1k-only run: the x axis stays near 1k (the paper's 10k and 50k are not drawn), and
    every seed's dot lies above the bars."""
    s = drawn(comparison_plots.error_vs_labels_figure, records("mnist", (1000,)), "mnist",
              tmp_path / "e.png", "MNIST")
    ax = s.axes[0]
    lo, hi = ax.get_xlim()
    assert 500 < lo < 1000 < hi < 2000, (lo, hi)
    xs = [x for line in ax.lines for x in line.get_xdata()]
    assert xs and max(xs) < 2000  # no paper point beyond the run
    assert "paper: random init" in s.legend_texts  # the paper's 1k is beside the run's
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    bars = [a for a in [*ax.collections, *ax.lines] if isinstance(a, (LineCollection, Line2D))]
    assert len(dots) == 3 * 1 and bars  # one per arm and size
    assert min(d.get_zorder() for d in dots) > max(b.get_zorder() for b in bars)


def test_error_vs_labels_keeps_the_paper_sizes_inside_the_runs(drawn, tmp_path):  # noqa: F811
    s = drawn(comparison_plots.error_vs_labels_figure, records("cifar10", (1000, 10000, 45000)),
              "cifar10", tmp_path / "e.png", "CIFAR-10")
    lo, hi = s.axes[0].get_xlim()
    assert 500 < lo < 1000 and 50000 < hi < 100000  # the paper's 50k beside the 45k pool


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory) -> Path:
    """A workdir pretrained by the smoke preset, as a command leaves it."""
    w = tmp_path_factory.mktemp("reader") / "w"
    proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain",
                           "--config=configs/mnist.py:smoke", f"--workdir={w}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return w


def test_a_command_leaves_no_lock(smoke_workdir):
    assert (smoke_workdir / "config.json").is_file()
    assert not (smoke_workdir / ".lock").exists()


def test_a_failing_command_leaves_no_lock_either(tmp_path):
    """A command that fails or is interrupted ends through common.end (os._exit, without
    Python's exit hooks) while it holds its workdir's lock; the lock goes all the same."""
    w = tmp_path / "w"
    w.mkdir()
    code = ("import sys, pathlib; from pipelines import common; from scae import workdir; "
            "workdir.lock(sys.argv[1]); "
            "print((pathlib.Path(sys.argv[1]) / '.lock').exists(), flush=True); common.end(3)")
    proc = subprocess.run([sys.executable, "-c", code, str(w)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stdout.strip() == "True"  # it held the lock, with its file
    assert not (w / ".lock").exists()


def test_the_random_panel_is_the_random_arms_initialisation(smoke_workdir, monkeypatch):
    """visualize's filters_conv1_compared.png: its random panel is seed 0's random arm as
    fine-tuning starts it (finetune.seed_keys and initial_model), not another draw."""
    from pipelines import common, visualize
    from scae.models import modules as models
    from scae.study import finetune

    panels = {}
    real = figures.plots.filters_side_by_side

    def capture(ps, path, *args, **kwargs):
        panels[Path(path).name] = ps
        real(ps, path, *args, **kwargs)

    monkeypatch.setattr(figures.plots, "filters_side_by_side", capture)
    flags.FLAGS.unparse_flags()  # as a fresh process: no flags parsed yet
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    try:
        with mock.patch.object(sys, "argv", ["pipelines/visualize.py",
                                             f"--workdir={smoke_workdir}"]), \
                pytest.raises(SystemExit) as end:
            common.run(visualize.main, needs_config=False)
    finally:
        workdir_lib.release(smoke_workdir)
    assert end.value.code in (0, None)
    title, shown = panels["filters_conv1_compared.png"][1]
    assert title.startswith("random initialisation")
    config = workdir_lib.load_config(smoke_workdir)
    spec = models.CNNSpec.from_config(config.model, (28, 28, 1))
    net = finetune.initial_model(spec, None, "random", finetune.seed_keys(config.seed, 0)[0])
    np.testing.assert_array_equal(shown, np.moveaxis(np.asarray(net.conv1.w[...]), 3, 0))
    assert not (smoke_workdir / ".lock").exists()  # given back: the file goes with it


def hold_elsewhere(workdir: Path, shared: bool) -> subprocess.Popen:
    """Another process that holds ``workdir``'s lock until its stdin closes, then exits."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from scae import workdir; "
         f"workdir.lock(Path(sys.argv[1]), shared={shared}); print('locked', flush=True); "
         "sys.stdin.read()", str(workdir)],
        cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def end(p: subprocess.Popen) -> None:
    p.stdin.close()
    assert p.wait(timeout=60) == 0


def test_only_the_last_holder_removes_the_lock_file(tmp_path):
    w = tmp_path / "w"
    workdir_lib.lock(w)
    assert (w / ".lock").is_file()
    workdir_lib.release(w)
    assert not (w / ".lock").exists()

    reader = hold_elsewhere(w, shared=True)
    try:
        workdir_lib.lock(w, shared=True)  # a second reader beside it
        workdir_lib.release(w)
        assert (w / ".lock").is_file()  # the other reader still holds it
        with pytest.raises(InputError, match="in use by a running command"):
            workdir_lib.lock(w)  # no writer beside a reader
    finally:
        end(reader)
    assert not (w / ".lock").exists()  # the last one out removed it

    writer = hold_elsewhere(w, shared=False)
    try:
        for shared in (False, True):
            with pytest.raises(InputError, match="in use by a running command"):
                workdir_lib.lock(w, shared=shared)
        assert (w / ".lock").is_file()  # a refused process removes nothing
    finally:
        end(writer)
    assert not (w / ".lock").exists()
    workdir_lib.lock(w)  # free again
    workdir_lib.release(w)


def test_a_lock_on_a_file_its_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """A process that opened the lock file just before its holder removed it and let go must
    not count the removed file as the lock: it takes the file now at the path."""
    w = tmp_path / "w"
    w.mkdir()
    stale = w / ".lock"
    real_open = open
    opened = []

    def open_then_lose(path, *args, **kwargs):  # the holder removes the file right after
        f = real_open(path, *args, **kwargs)
        if Path(path) == stale and not opened:
            opened.append(f)
            os.unlink(path)
        return f

    monkeypatch.setattr("builtins.open", open_then_lose)
    workdir_lib.lock(w)
    monkeypatch.undo()
    try:
        held = workdir_lib._LOCKS[str(w.resolve())]
        assert os.fstat(held.fileno()).st_ino == os.stat(stale).st_ino
        assert opened[0].closed
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from scae import workdir; workdir.lock(Path(sys.argv[1]))", str(w)],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
        assert holder.returncode != 0 and "in use by a running command" in holder.stderr
    finally:
        workdir_lib.release(w)
