"""Every figure, drawn from hand-made records at its default size, checked as a reader would:
titles name the data set, axes have labels, no text runs into other text, legends hide no
data, epoch axes have whole-number ticks. MNIST-like and CIFAR-like label sizes (CIFAR-10's
45k runs sit beside the paper's 50k)."""

from __future__ import annotations

import itertools
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from flax import nnx

from scae.models import modules as models
from scae.models.stack import Stack
from scae.report import compare_plots as comparison_plots
from scae.report import plotting as plots
from scae.report import workdir_figures as figures

ARMS = ("random", "pretrained", "frozen")
SIZES = {"MNIST": ("mnist", (1000, 10000, 50000)), "CIFAR-10": ("cifar10", (1000, 10000, 45000)),
         "crowded": ("folder", (100, 150, 200, 1000, 1200))}


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Calls a figure function and returns the figures it saved, drawn, with their renderer;
    the files are still written."""
    saved = []
    real_save = plots.save

    def save(fig, path, *args, **kwargs):
        fig.canvas.draw()
        # What a reader sees: the boxes of every text as drawn, before the figure is closed.
        saved.append(Snapshot(fig))
        real_save(fig, path, *args, **kwargs)
        assert Path(path).stat().st_size > 0

    monkeypatch.setattr(plots, "save", save)

    def draw(fn, *args, **kwargs):
        saved.clear()
        fn(*args, **kwargs)
        assert len(saved) == 1
        return saved[0]

    return draw


class Snapshot:
    """The texts, axes and legends of a drawn figure with their window boxes."""

    def __init__(self, fig):
        r = fig.canvas.get_renderer()
        self.suptitle = fig._suptitle.get_text() if fig._suptitle else ""
        self.axes = [ax for ax in fig.axes if ax.get_visible()]
        self.titles = [t.get_text() for ax in self.axes
                       for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
        self.texts = []  # (kind, text, box)
        for ax in self.axes:
            for t in tick_labels(ax):
                self.texts.append(("tick", t.get_text(), t.get_window_extent(r)))
            for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label,
                      ax.yaxis.label):
                if t.get_text() and t.get_visible():
                    self.texts.append(("label", t.get_text(), t.get_window_extent(r)))
        if fig._suptitle:
            self.texts.append(("label", self.suptitle, fig._suptitle.get_window_extent(r)))
        self.legends = [lg for lg in [*fig.legends, *(ax.get_legend() for ax in self.axes)] if lg]
        self.legend_texts = [t.get_text() for lg in self.legends for t in lg.get_texts()]
        self.legend_boxes = [lg.get_window_extent(r) for lg in self.legends]
        self.axes_boxes = [(ax, ax.get_window_extent(r)) for ax in self.axes]
        self.xlabels = [ax.get_xlabel() for ax in self.axes if ax.axison]
        self.ylabels = [ax.get_ylabel() for ax in self.axes if ax.axison]
        self.epoch_ticks = [t for ax in self.axes if ax.get_xlabel() == "epoch"
                            for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        self.x_tick_texts = [[t.get_text() for t in tick_labels(ax, "x")]
                             for ax in self.axes]

    def all_text(self) -> str:
        return "\n".join([self.suptitle, *self.titles, *self.legend_texts])


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1


def check_legible(s: Snapshot, dataset_title: str) -> None:
    assert dataset_title in s.all_text(), s.all_text()
    for x in s.xlabels + s.ylabels:
        assert x.strip(), "an axis without a label"
    for (_, ta, a), (_, tb, b) in itertools.combinations(s.texts, 2):
        assert not overlaps(a, b), f"{ta!r} overlaps {tb!r}"
    for box in s.legend_boxes:  # legends sit outside every panel: they hide no data
        for ax, ab in s.axes_boxes:
            assert not overlaps(box, ab), f"a legend covers the panel {ax.get_title()!r}"
        for _, t, b in s.texts:
            assert not overlaps(box, b), f"a legend covers {t!r}"
    # A title never runs into another panel (filter grids sit right under their neighbour's).
    for kind, t, b in s.texts:
        for ax, ab in s.axes_boxes:
            if kind == "label" and t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()):
                continue
            if kind == "label" and not ax.axison:
                assert not overlaps(b, ab), f"{t!r} runs into the panel {ax.get_title()!r}"
    assert all(float(t).is_integer() for t in s.epoch_ticks), s.epoch_ticks


def records(dataset: str, sizes, seeds: int = 3, epochs: int = 12):
    rng = np.random.default_rng(0)
    rows = []
    for size, arm, seed in itertools.product(sizes, ARMS, range(seeds)):
        base = 60 * (1000 / size) ** 0.4 + {"random": 0, "pretrained": -1, "frozen": 3}[arm]
        curve = [[e, base + 20 / e + rng.normal(0, 0.5)] for e in range(1, epochs + 1)]
        rows.append({"dataset": dataset, "label_size": size, "arm": arm, "seed": seed,
                     "test_error": base + rng.normal(0, 0.8), "curve": curve})
    return rows


@pytest.mark.parametrize("title", sorted(SIZES))
def test_error_vs_labels(drawn, tmp_path, title):
    dataset, sizes = SIZES[title]
    s = drawn(comparison_plots.error_vs_labels_figure, records(dataset, sizes), dataset,
              tmp_path / "e.png", title)
    check_legible(s, title)
    assert s.xlabels == ["labelled training images (log scale)"]
    assert s.ylabels[0].startswith("test error (%")
    for arm in ("random init", "CAE pretrained", "CAE frozen"):
        assert arm in s.legend_texts
    shown = s.x_tick_texts[0]
    # Every size that was run keeps its tick label; only a crowding paper-only size loses one.
    for size in sizes:
        assert comparison_plots._size_label(size) in shown, (size, shown)
    if dataset == "cifar10":
        assert "50k" not in shown and "paper: random init" in s.legend_texts
    assert "median, bars from the lowest to the highest seed" in s.all_text()


def refit_records(failed_seed: int | None = None) -> list[dict]:
    """CIFAR-10-like records whose full cell (45,000 labels of a 45,000-image pool) is refit
    on all 50,000 training images, without validation curves; optionally one failed run."""
    rows = records("cifar10", (1000, 10000, 45000))
    for r in rows:
        r.update(pool_size=45000, refit_full=r["label_size"] == 45000,
                 train_size=50000 if r["label_size"] == 45000 else r["label_size"])
        if r["refit_full"]:
            r["curve"] = [[30, float("nan")]]
        if (r["label_size"], r["arm"], r["seed"]) == (10000, "pretrained", failed_seed):
            r["test_error"] = 90.0
    return rows


def test_figure_labels_come_from_the_records(drawn, tmp_path):
    rows = refit_records(failed_seed=0)
    s = drawn(comparison_plots.error_vs_labels_figure, rows, "cifar10", tmp_path / "e.png",
              "CIFAR-10")
    check_legible(s, "CIFAR-10")
    shown = s.x_tick_texts[0]
    assert "all (50,000)" in shown and "45k" not in shown and "45,000" not in shown
    # The failed run's cell: a bar from its lowest to its highest seed, never below the lowest.
    ax = s.axes[0]
    errs = sorted(r["test_error"] for r in rows
                  if (r["label_size"], r["arm"]) == (10000, "pretrained"))
    lows = [seg[:, 1].min() for coll in ax.collections if hasattr(coll, "get_segments")
            for seg in coll.get_segments() if len(seg) == 2 and seg[0, 0] == seg[1, 0]]
    assert min(lows) >= min(r["test_error"] for r in rows) - 1e-9
    assert any(abs(lo - errs[0]) < 1e-9 for lo in lows)

    c = drawn(comparison_plots.curves_figure, rows, tmp_path / "c.png", "CIFAR-10")
    check_legible(c, "CIFAR-10")
    # The refit cell has no validation curve: no panel for it, none empty.
    assert [t.split("\n")[0] for t in c.titles] == ["1,000 labels", "10,000 labels"]
    assert len(c.axes) == 2


def test_figure_texts_describe_the_preprocessing(drawn, tmp_path):
    def config(**data):
        return ml_collections.ConfigDict({"data": {"preprocess": "none", "standardize": False,
                                                   "scale": "unit", **data}})

    assert figures._pixels(config(preprocess="gcn_zca")) == "GCN + ZCA-whitened pixels"
    assert figures._pixels(config(standardize=True)).startswith("standardised pixels")
    assert figures._pixels(config()) == "pixels scaled to [0, 1]"
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    s = drawn(comparison_plots.embedding_figure, rng.normal(size=(60, 12)),
              rng.normal(size=(60, 5)), labels, ["a", "b", "c"], tmp_path / "e.png",
              "CIFAR-10 test set", inputs=figures._pixels(config(preprocess="gcn_zca")))
    assert s.titles[0].startswith("GCN + ZCA-whitened pixels")
    assert "raw pixels" not in s.all_text()


@pytest.mark.parametrize("title", sorted(SIZES))
def test_curves(drawn, tmp_path, title):
    dataset, sizes = SIZES[title]
    s = drawn(comparison_plots.curves_figure, records(dataset, sizes, epochs=7),
              tmp_path / "c.png", title)
    check_legible(s, title)
    assert s.epoch_ticks and set(s.xlabels) == {"epoch"}
    assert s.ylabels[0] == "validation error (%)"
    assert [t.split("\n")[0] for t in s.titles] == [f"{n:,} labels" for n in sizes]
    assert sorted(s.legend_texts) == sorted(["random init", "CAE pretrained", "CAE frozen"])


def test_curves_say_when_arms_have_different_seed_counts(drawn, tmp_path):
    rows = [r for r in records("mnist", (1000,)) if not (r["arm"] == "frozen" and r["seed"])]
    s = drawn(comparison_plots.curves_figure, rows, tmp_path / "c.png", "MNIST")
    assert "CAE frozen: 1" in s.titles[0] and "random init: 3" in s.titles[0]


@pytest.mark.parametrize("epochs", [1, 3, 30])
def test_pretrain_loss(drawn, tmp_path, epochs):
    recs = [{"layer": k, "epoch": e, "train_mse": 0.1 / e + 0.01 * k, "val_mse": 0.11 / e}
            for k in (1, 2, 3) for e in range(1, epochs + 1)]
    s = drawn(plots.pretrain_loss_figure, recs, tmp_path / "loss.png", "CIFAR-10",
              "pixels scaled to [0, 1]")
    check_legible(s, "CIFAR-10")
    assert s.epoch_ticks and set(s.xlabels) == {"epoch"}
    assert "reconstruction MSE" in s.ylabels[0]
    assert sorted(s.legend_texts) == ["train", "validation"]
    titles = [" ".join(t.split()) for t in s.titles]
    assert "reconstructs pixels scaled to [0, 1]" in titles[0]
    assert "layer 1's pooled maps" in titles[1]


@pytest.mark.parametrize("channels,title", [(1, "MNIST"), (3, "CIFAR-10")])
def test_filters_before_after(drawn, tmp_path, channels, title):
    rng = np.random.default_rng(0)
    before = rng.normal(size=(100, 5, 5, channels))
    after = {"CAE pretrained, after fine-tuning\non 45,000 labels (seed 0)": before,
             "random": before + 1}
    s = drawn(comparison_plots.filters_before_after_figure, before, after, tmp_path / "f.png",
              title)
    check_legible(s, title)
    assert "100 filters of 5x5 pixels" in s.suptitle
    assert any("CAE pretrained" in t for t in s.titles)
    assert any(t.startswith("random init") for t in s.titles)


def test_filters_compared_with_many_runs(drawn, tmp_path):
    """visualize's grid: the stack, a random init and every kept fine-tuned run (8 panels)."""
    rng = np.random.default_rng(0)
    compare = tmp_path / "compare"
    compare.mkdir()
    for size, arm in itertools.product((1000, 10000, 45000), ("pretrained", "random")):
        np.save(compare / f"conv1_{arm}_{size}.npy", rng.normal(size=(5, 5, 3, 20)))
    config = ml_collections.ConfigDict({"dataset": "cifar10", "model": {"pool_sizes": (2,)}})
    params = Stack([models.CAESpec(3, 20, 5)], (2,), rngs=nnx.Rngs(0))
    s = drawn(figures.filters_compared_figure, config, params, rng.normal(size=(20, 5, 5, 3)),
              compare, tmp_path / "f.png")
    check_legible(s, "CIFAR-10")
    assert len(s.titles) == 8
    assert s.titles[2].startswith("CAE pretrained") and "1,000 labels" in s.titles[2]
    assert "45,000 labels" in s.titles[-1]


@pytest.mark.parametrize("classes", [None, ["airplane", "automobile", "bird", "cat", "deer",
                                            "dog", "frog", "horse", "ship", "truck"]])
def test_embedding(drawn, tmp_path, classes):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 10
    s = drawn(comparison_plots.embedding_figure, rng.normal(size=(300, 3072)),
              rng.normal(size=(300, 80)) + labels[:, None], labels, classes,
              tmp_path / "e.png", "CIFAR-10 test set")
    check_legible(s, "CIFAR-10 test set")
    assert s.xlabels[0].startswith("PC1 (") and s.ylabels[0].startswith("PC2 (")
    assert s.legend_texts == (classes or [str(k) for k in range(10)])


def test_filter_grid_and_reconstructions(drawn, tmp_path):
    rng = np.random.default_rng(0)
    s = drawn(plots.filters_figure, rng.normal(size=(150, 5, 5, 1)),
              "MNIST, CAE layer 2: 150 filters of 5x5, projected to pixels through the layers "
              "below", tmp_path / "f.png")
    check_legible(s, "MNIST")
    images = rng.integers(0, 255, size=(10, 32, 32, 3), dtype=np.uint8)
    s = drawn(plots.reconstructions_figure, images, images,
              "CIFAR-10 validation images, CAE layer 3 reconstructions (decoded back through "
              "the stack)", tmp_path / "r.png")
    check_legible(s, "CIFAR-10")
    assert s.titles == ["original", "reconstruction"]


def test_crowded_tick_labels_are_dropped_not_overlapped(drawn, tmp_path):
    """The check itself can fail: many close sizes would overlap without the thinning."""
    sizes = tuple(range(1000, 1600, 50))
    s = drawn(comparison_plots.error_vs_labels_figure, records("folder", sizes, seeds=1),
              "folder", tmp_path / "e.png", "my data")
    check_legible(s, "my data")
    assert 1 < len(s.x_tick_texts[0]) < len(sizes)


def test_visualize_style():
    import matplotlib

    from pipelines import visualize
    from scae.errors import InputError

    with matplotlib.rc_context():
        visualize._use_style("ggplot")
        assert matplotlib.rcParams["axes.facecolor"] == "#E5E5E5"
    with pytest.raises(InputError, match="--style: 'no-such-style'"):
        visualize._use_style("no-such-style")

def tick_labels(ax, which: str = "xy") -> list:
    """The tick labels of ``ax`` a reader sees: visible, non-empty and inside the view (of the
    x and/or y axis, major and minor)."""
    out = []
    for axis in (ax.xaxis if "x" in which else None, ax.yaxis if "y" in which else None):
        if axis is None:
            continue
        lo, hi = sorted(axis.get_view_interval())
        span = (hi - lo) * 1e-9
        for tick in itertools.chain(axis.get_major_ticks(), axis.get_minor_ticks()):
            if not lo - span <= tick.get_loc() <= hi + span:
                continue
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip():
                    out.append(label)
    return out
