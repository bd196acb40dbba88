"""Exercises as a learner meets them: an open cell first, the answer after, never run for them.

Each exercise is a code cell the learner edits (a `# TODO` with a runnable default that does not
give the answer away), followed by its solution as a *markdown* cell tagged "solution":

    <details><summary>Solution (open it after your attempt)</summary>

    ```python
    ...the solution's code...
    ```

    </details>

Markdown never runs, so neither `make run` nor Run All in JupyterLab prints an answer before the
learner has predicted it; they open the fold, read, and paste the code into the cell above. The
tests still run every solution: `with_solutions` turns each fold back into a code cell, right
where it stands, and the rerun check executes that notebook (tests/test_notebooks_rerun.py).
"""
from __future__ import annotations

import copy
import re

TAG = "solution"
SUMMARY = "Solution (open it after your attempt)"
_CODE = re.compile(r"```python\n(.*?)```", re.S)


def solution_markdown(code: str, note: str = "") -> str:
    """The markdown of a solution fold holding `code` (and a line of explanation before it)."""
    lead = f"{note.strip()}\n\n" if note.strip() else ""
    return (f"<details><summary>{SUMMARY}</summary>\n\n{lead}```python\n{code.strip()}\n```\n\n"
            "</details>")


def solution_code(source: str) -> str:
    """The code of a solution fold; ValueError unless it holds exactly one python block."""
    blocks = _CODE.findall(source)
    if len(blocks) != 1:
        raise ValueError(f"a solution fold needs exactly one ```python block, found {len(blocks)}")
    return blocks[0]


def is_solution(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def with_solutions(nb):
    """A copy of the notebook in which each solution fold is followed by its code as a code cell
    (tagged "solution"), so that running it runs every answer where the learner would paste it."""
    # deferred: nbformat is slow to import, and only the tests need it
    from nbformat.v4 import new_code_cell

    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        cells.append(cell)
        if cell.cell_type == "markdown" and is_solution(cell):
            cells.append(new_code_cell(solution_code(cell.source), id=f"{cell.id}-run",
                                       metadata={"tags": [TAG]}))
    out.cells = cells
    return out
