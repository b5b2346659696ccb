"""The figures of a workdir, computed from a trained stack and its records.

:func:`pretrain_figures` draws a pretrain workdir's figures, :func:`comparison_figures` a
compare workdir's; both only read what the training wrote (checkpoints, ``metrics.jsonl``,
``runs.jsonl``, ``conv1_*.npy``), so they can be redrawn at any time without training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scae import atomic
from scae.data import preprocess
from scae.models.stack import Stack
from scae.report import compare_plots as comparison_plots
from scae.report import plotting as plots
from scae.report import tables

NUM_RECONSTRUCTIONS = 10
EMBEDDING_POINTS = 2000


def display_name(config) -> str:
    """The data set's display name for figure titles (MNIST, CIFAR-10, or the config's name)."""
    from scae.report.tables import DATASET_NAMES

    return DATASET_NAMES.get(config.dataset, str(config.dataset))


# The inputs after data.preprocess: global contrast normalisation, then ZCA whitening.
PREPROCESSED = {"gcn": "GCN-normalised pixels", "gcn_zca": "GCN + ZCA-whitened pixels"}


def _pixels(config) -> str:
    """What the first CAE reconstructs, in the units of its MSE: the preprocessing the
    config applied (``data.preprocess``, else ``data.standardize``, else ``data.scale``)."""
    how = config.data.get("preprocess", "none")
    if how in PREPROCESSED:
        return PREPROCESSED[how]
    if config.data.get("standardize", False):
        return "standardised pixels (per-channel mean 0, std 1)"
    return {"unit": "pixels scaled to [0, 1]", "symmetric": "pixels scaled to [-1, 1]"}.get(
        config.data.scale, "pixels")


def pretrain_figures(config, stack: Stack, images: np.ndarray, normalizer: preprocess.Normalizer,
                     out_dir: Path, records: list[dict] | None = None,
                     dataset_title: str | None = None) -> list[Path]:
    """Filter grids and reconstructions of every layer, and the loss curves, into ``out_dir``.

    ``images`` are a few preprocessed float32 images to reconstruct; ``dataset_title`` names
    the data set in the titles (default: from ``config.dataset``).
    """
    title = dataset_title or display_name(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = stack.specs
    written = []
    x = images[:NUM_RECONSTRUCTIONS]
    originals = preprocess.to_uint8(np.asarray(x), normalizer)
    for k in range(1, stack.depth + 1):
        n_maps, kern = specs[k - 1].maps, specs[k - 1].kernel
        how = "" if k == 1 else ", projected to pixels through the layers below"
        path = out_dir / f"filters_layer{k}.png"
        plots.filters_figure(stack.project_filters(k),
                             f"{title}, CAE layer {k}: {n_maps} filters of {kern}x{kern}{how}",
                             path)
        written.append(path)
        recon = stack.reconstruct(x, k)
        path = out_dir / f"reconstructions_layer{k}.png"
        how = "" if k == 1 else " (decoded back through the stack)"
        plots.reconstructions_figure(originals, preprocess.to_uint8(np.asarray(recon), normalizer),
                                     f"{title} validation images, CAE layer {k} "
                                     f"reconstructions{how}", path)
        written.append(path)
    if records:
        path = out_dir / "loss.png"
        plots.pretrain_loss_figure(records, path, title, _pixels(config))
        written.append(path)
    return written


def _fine_tuned_filters(compare_dir: Path, arm: str, size: int) -> np.ndarray | None:
    """The first-layer filters (N, H, W, C) one ``arm`` run at ``size`` labels ended with, if
    ``compare`` kept them (``conv1_<arm>_<size>.npy``)."""
    path = compare_dir / f"conv1_{arm}_{size}.npy"
    return np.moveaxis(np.load(path), 3, 0) if path.is_file() else None


def comparison_figures(config, data, stack: Stack, rows: list[dict], compare_dir: Path,
                       out_dir: Path, dataset_title: str | None = None) -> list[Path]:
    """The comparison's figures from its records, into ``out_dir``: ``error_vs_labels.png``,
    ``curves.png``, ``filters_conv1.png`` (the stack's first-layer filters and, at the largest
    label size, those of the pretrained and random arms after fine-tuning) and
    ``embedding.png`` (PCA of test images and of the stack's top-layer features).

    ``data`` is the workdir's :class:`scae.data.inputs.Inputs`, ``stack`` its stack, ``rows`` the
    run records of ``compare_dir/runs.jsonl``.
    """
    identity = getattr(data, "identity", None)
    title = dataset_title or (identity.title if identity else display_name(config))
    # The paper's figures are drawn only beside a test split that is the paper's.
    paper_key = identity.paper_key if identity else config.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "error_vs_labels.png", out_dir / "curves.png"]
    comparison_plots.error_vs_labels_figure(rows, paper_key, written[0], title)
    comparison_plots.curves_figure(rows, written[1], title)
    sizes = sorted({int(r["label_size"]) for r in rows})
    if not sizes:
        return written
    after = {}
    for arm in ("pretrained", "random"):
        w = _fine_tuned_filters(compare_dir, arm, sizes[-1])
        if w is not None:
            after[f"{comparison_plots.arm_label(arm)}, after fine-tuning\n"
                  f"on {tables.label_text(sizes[-1], rows)} labels (one seed)"] = w
    path = out_dir / "filters_conv1.png"
    comparison_plots.filters_before_after_figure(
        np.moveaxis(np.asarray(stack.layers[0].w[...]), 3, 0), after, path, title)
    written.append(path)
    x = data.test_images[:EMBEDDING_POINTS]
    feats = stack.encode(x)
    path = out_dir / "embedding.png"
    comparison_plots.embedding_figure(np.asarray(x).reshape(x.shape[0], -1),
                                      np.asarray(feats).reshape(x.shape[0], -1),
                                      data.test_labels[:EMBEDDING_POINTS], data.class_names,
                                      path, f"{title} test set", inputs=_pixels(config))
    written.append(path)
    return written


def filters_compared_figure(config, stack: Stack, random_filters: np.ndarray, compare_dir: Path,
                            path: Path, dataset_title: str | None = None) -> Path:
    """First-layer filters of the stack, of the random arm's initialisation (``random_filters``,
    (N, H, W, C): seed 0's, from the key :func:`scae.study.finetune.seed_keys` gives it, so the
    panel is where that arm's fine-tuned filters started) and of every fine-tuned run
    ``compare`` kept, at every label size."""
    title = dataset_title or display_name(config)
    panels = [("CAE stack, layer 1\n(before fine-tuning)", stack.project_filters(1)),
              ("random initialisation\n(seed 0, before training)", random_filters)]
    kept = []
    for npy in compare_dir.glob("conv1_*_*.npy"):
        _, arm, size = npy.stem.split("_")
        if size.isdigit():
            kept.append((int(size), arm))
    for size, arm in sorted(kept, key=lambda sa: (sa[0], sa[1] != "pretrained")):
        panels.append((f"{comparison_plots.arm_label(arm)}, after fine-tuning\non {size:,} "
                       f"labels (one seed)", _fine_tuned_filters(compare_dir, arm, size)))
    n, h, w = panels[0][1].shape[:3]
    plots.filters_side_by_side(panels, path, plots.titled(
        title, f"first-layer filters ({n} of {h}x{w} pixels) before and after fine-tuning"))
    return path



def redraw_published(folder: Path) -> list[Path]:
    """Redraws the figures of a published results folder that need only its records:
    ``compare_error_vs_labels.png`` and ``compare_curves.png`` from ``runs.jsonl``, and
    ``pretrain_loss.png`` from seed 0's ``metrics.jsonl`` and ``config.json``. The figures
    that need the trained stack or fine-tuned filters (filters, reconstructions, embedding)
    are left as the training drew them.

      python -c "from pathlib import Path; from scae.report import workdir_figures as f; \\
                 f.redraw_published(Path('results/cifar10_paper'))"
    """
    import json

    import ml_collections

    folder = Path(folder)
    rows = atomic.read_jsonl(folder / "runs.jsonl")
    written = []
    config_path = folder / "config.json"
    config = (ml_collections.ConfigDict(json.loads(config_path.read_text()))
              if config_path.is_file() else None)
    if rows:
        identity = tables.data_identity(rows, None if "data_title" in rows[0]
                                        else rows[0].get("dataset"))
        title = identity.title
        written += [folder / "compare_error_vs_labels.png", folder / "compare_curves.png"]
        comparison_plots.error_vs_labels_figure(rows, identity.paper_key, written[0], title)
        comparison_plots.curves_figure(rows, written[1], title)
    else:
        title = display_name(config) if config is not None else None
    metrics = atomic.read_jsonl(folder / "metrics.jsonl")
    if metrics and config is not None and "data" in config:
        written.append(folder / "pretrain_loss.png")
        plots.pretrain_loss_figure(metrics, written[-1], title, _pixels(config))
    return written
