"""Committed notebooks: no outputs, a papermill parameters cell first, a header saying what they do."""
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_series_is_complete_and_ordered():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == [f"{i:02d}" for i in range(len(numbers))]
    assert len(numbers) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    with_outputs = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not with_outputs, f"{path.name}: code cells {with_outputs} carry outputs; clear them"
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell untagged"
    assert "HUMANIZER_PRESET" in code[0].source
    assert nb.cells[0].cell_type == "markdown" and "Writes" in nb.cells[0].source
