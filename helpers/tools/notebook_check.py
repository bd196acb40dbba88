"""Run a notebook top to bottom, then every code cell a second time in the same kernel, in order:
a learner reruns cells after the whole notebook ran, so none may depend on state a later cell
destroys. Also records which Config fields the notebook reads (config.start_field_trace).

    python -m helpers.tools.notebook_check [04 05 ...]   # all notebooks in series order by default;
                                                    # prints the FIELDS_READ map for helpers/core/config.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.core.config import REPO_ROOT
from helpers.tools.series import kernel_name

NOTEBOOKS = REPO_ROOT / "notebooks"
TRACE_START = "import helpers.core.config as __field_trace\n__field_trace.start_field_trace()"
TRACE_STOP = "import json as __json\nprint(__json.dumps(__field_trace.stop_field_trace()))"


class RerunError(AssertionError):
    """A cell failed: names the notebook, the pass, the cell and the error. `fields` holds the
    Config fields read until then (all of the first run's when `completed_first_run`)."""


def number(path: Path) -> str:
    return path.name[:2]


def run_twice(path: Path, timeout: int = 900) -> dict:
    """{'fields': Config fields read, 'first_s', 'second_s', 'cell_s': {cell index: [first,
    second]}}; RerunError on the first failing cell. Every code cell runs, hidden solution cells
    included; the kernel inherits os.environ (preset)."""
    nb = nbformat.read(path, as_version=4)
    code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    start, stop = nbformat.v4.new_code_cell(TRACE_START), nbformat.v4.new_code_cell(TRACE_STOP)
    nb.cells += [start, stop]  # executed by hand below; the cell list only gives them an index
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name(),
                            resources={"metadata": {"path": str(path.parent)}})
    seconds, cell_seconds, failure = [], {}, None
    with client.setup_kernel():
        client.execute_cell(start, len(nb.cells) - 2)
        for run in ("first run", "second run"):
            began = time.perf_counter()
            for index, cell in code:
                cell.outputs = []
                cell_began = time.perf_counter()
                try:
                    client.execute_cell(cell, index)
                    cell_seconds.setdefault(index, []).append(
                        round(time.perf_counter() - cell_began, 1))
                except CellExecutionError as err:
                    failure = (f"{path.name}, {run}, cell {index} (code cell "
                               f"{[i for i, _ in code].index(index)}): {err.ename}: {err.evalue}")
                    break
            if failure:
                break
            seconds.append(round(time.perf_counter() - began, 1))
        client.execute_cell(stop, len(nb.cells) - 1)
    printed = "".join(o.get("text", "") for o in stop.outputs if o.get("name") == "stdout")
    fields = json.loads(printed.strip().splitlines()[-1])
    if failure:
        error = RerunError(failure)
        error.fields, error.completed_first_run = fields, bool(seconds)
        raise error
    return {"fields": fields, "first_s": seconds[0], "second_s": seconds[1],
            "cell_s": cell_seconds}


def series(numbers: list[str] | None = None) -> list[Path]:
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in books if not numbers or number(p) in numbers]


def main() -> None:
    fields = {}
    for path in series(sys.argv[1:]):
        result = run_twice(path)
        fields[number(path)] = tuple(result["fields"])
        slowest = sorted(result["cell_s"].items(), key=lambda kv: -sum(kv[1]))[:5]
        print(f"{path.name}: first run {result['first_s']:.0f} s, second run "
              f"{result['second_s']:.0f} s; slowest cells (index: first, second s): "
              + ", ".join(f"{i}: {a}, {b}" for i, (a, b) in slowest), flush=True)
    print("FIELDS_READ: dict[str, tuple[str, ...]] = {")
    for book, names in fields.items():
        print(f'    "{book}": {names},')
    print("}")


if __name__ == "__main__":
    main()
