"""docs/tour.ipynb is a valid nbformat 4 notebook whose code cells run in order, in one
namespace, to the end: on tiny data (SCAE_TOUR_TINY=1: a smoke stack pretrained in place of
the published one), with matplotlib's Agg backend, every figure drawn and closed."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "tour.ipynb"


def notebook() -> dict:
    return json.loads(TOUR.read_text())


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def test_the_tour_is_an_nbformat_4_notebook():
    nb = notebook()
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 4
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert set(kinds) == {"markdown", "code"} and kinds[0] == "markdown"
    for cell in nb["cells"]:
        assert isinstance(cell["metadata"], dict) and source(cell).strip()
        if cell["cell_type"] == "code":  # committed without outputs
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert len({c["id"] for c in nb["cells"]}) == len(nb["cells"])
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    # the steps the tour promises
    for step in ('scae.load_stack("mnist")', "project_filters(", "stack.encode(",
                 "scae.finetune(", "plt.show()"):
        assert step in code, step


@pytest.mark.heavy
@pytest.mark.slow
def test_the_tour_runs_on_tiny_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAE_TOUR_TINY", "1")
    monkeypatch.chdir(tmp_path)  # nothing it writes lands in the checkout
    drawn = []

    def show(*args, **kwargs):  # what a reader would see: every open figure, then closed
        for number in plt.get_fignums():
            fig = plt.figure(number)
            fig.canvas.draw()
            drawn.append(fig)
        plt.close("all")

    monkeypatch.setattr(plt, "show", show)
    namespace = {"__name__": "__tour__"}
    for i, cell in enumerate(notebook()["cells"]):
        if cell["cell_type"] == "code":
            try:
                exec(compile(source(cell), f"{TOUR.name}[{i}]", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - which cell failed, then the error
                pytest.fail(f"cell {i} of {TOUR.name}: {type(e).__name__}: {e}")
    assert len(drawn) == 4
    assert set(namespace["results"]) == {"random", "pretrained"}
    assert namespace["features"].shape[0] == 4
    assert not list(tmp_path.iterdir())
