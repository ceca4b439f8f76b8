"""The teaching notebooks run top to bottom, and are committed with their outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))
nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")


def test_the_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_convolution_arithmetic.ipynb", "02_lenet_fashion_mnist.ipynb",
                     "03_classic_architectures.ipynb", "04_relu_vs_tanh.ipynb",
                     "05_alexnet_regularisers.ipynb",
                     "06_residual_depth.ipynb",
                     "07_receptive_fields.ipynb", "08_translation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_outputs_and_no_errors(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert cells and all(c.execution_count for c in cells), "run notebooks/execute.py"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "cells were run out of order"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    """Every notebook, executed in its fast mode (``NUMBACONV_NOTEBOOK_FAST=1``: fewer images,
    epochs and seeds; the committed outputs are the full runs)."""
    pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    pytest.importorskip("matplotlib", reason="matplotlib is in the dev extra")
    pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra")
    from nbclient import NotebookClient

    monkeypatch.setenv("NUMBACONV_NOTEBOOK_FAST", "1")  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert text, "the notebook printed nothing"
    if "NOTEBOOK_START" in "".join(c.source for c in nb.cells):
        assert "(fast mode)" in text  # the fast mode was taken


@pytest.mark.parametrize("path", NOTEBOOKS[3:], ids=lambda p: p.stem)
def test_experiment_notebooks_say_how_long_their_full_run_took(path):
    nb = nbformat.read(path, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "notebook ran in" in text and "cores" in text and "(fast mode)" not in text
