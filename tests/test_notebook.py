"""notebooks/tutorial.ipynb: committed without outputs, and run headless top to bottom (nbclient, this
venv's ipykernel) it reproduces the tutorial's numbers in every section."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from mlnet_lightning.models import TUTORIAL_MODELS
from mlnet_lightning.reference import LOGITS_FIX, TUTORIAL
from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"
# What each section's `numbers:` line must match: the five networks, the double-softmax fix, the GPU cell.
EXPECTED = {**{name: TUTORIAL[name] for name in TUTORIAL_MODELS}, "logits": LOGITS_FIX, "gpu": TUTORIAL["sequential"]}
# Appended to the executed copy only: which interpreter the kernel runs.
KERNEL_PROBE = "import sys; print('kernel:', sys.executable)"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def execute(cwd: Path) -> nbformat.NotebookNode:
    """The notebook as a newcomer runs it, in the working directory `cwd`, one thread per process."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(KERNEL_PROBE))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})
    return notebook


def text_of(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_the_notebook_runs_and_reproduces_the_tutorial(tmp_path):
    """One test, so that the notebook runs once even when pytest-xdist spreads tests over workers."""
    notebook = execute(tmp_path)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]

    # Every cell ran, in order, without an error, in this venv's interpreter, writing nothing where it ran.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    for cell in code:
        assert not [output for output in cell.outputs if output.output_type == "error"], cell.source[:80]
    assert text_of(code[-1]).strip() == f"kernel: {sys.executable}"
    assert list(tmp_path.iterdir()) == []

    # Each section's numbers, as its `numbers:` line printed them, against the tutorial's.
    lines = [line for cell in code for line in text_of(cell).splitlines()]
    printed = [json.loads(line.removeprefix("numbers:")) for line in lines if line.startswith("numbers:")]
    assert [numbers["section"] for numbers in printed] == list(EXPECTED)
    on_gpu = torch.cuda.is_available()
    for numbers in printed:
        section = numbers["section"]
        assert set(numbers) == {"section", "device", "initial_loss", "final_loss", "train_acc", "val_acc"}
        assert numbers["device"].startswith("cuda" if section == "gpu" and on_gpu else "cpu"), section
        loose = section == "gpu" and on_gpu  # other kernels, other rounding: the notebook's own tolerance there
        for key, expected in EXPECTED[section].items():
            tolerance = (1e-3 if loose else 1e-5) if key.endswith("loss") else (1e-2 if loose else 1e-3)
            assert numbers[key] == pytest.approx(expected, abs=tolerance), (section, key)

    # The pictures, inline: the data, then a decision boundary and the curves for the five networks and the fix.
    images = [
        output
        for cell in code
        for output in cell.outputs
        if output.output_type == "display_data" and "image/png" in output.get("data", {})
    ]
    assert len(images) == 1 + 2 * 6
