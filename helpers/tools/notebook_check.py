"""Run a notebook top to bottom as Run All does, then every code cell a second time in the same
kernel with every exercise's answer pasted in: a learner reruns cells after the whole notebook ran,
so none may depend on state a later cell destroys, and every answer must still work.

    python -m helpers.tools.notebook_check [04 05 ...]   # all notebooks in series order by default
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.course.exercises import with_solutions
from helpers.tools.series import kernel_name, series


class RerunError(AssertionError):
    """A cell failed: names the notebook, the pass, the cell and the error; `completed_first_run`
    says whether every cell had run once before."""


def run_twice(path: Path, timeout: int = 900) -> dict:
    """{'first_s', 'second_s', 'cell_s': {(run, cell index): seconds}}; RerunError on the first
    failing cell. The first run is the learner's notebook as Run All and `make run` execute it (no
    answers); the second runs every code cell again and every exercise's solution right after its
    fold (course.exercises.with_solutions). The kernel inherits os.environ (preset)."""
    learner = nbformat.read(path, as_version=4)
    runs = (("first run", learner), ("second run", with_solutions(learner)))
    client = NotebookClient(learner, timeout=timeout, kernel_name=kernel_name(),
                            resources={"metadata": {"path": str(path.parent)}})
    seconds, cell_seconds, failure = [], {}, None
    with client.setup_kernel():
        for run, nb in runs:
            client.nb = nb  # execute_cell stores each cell back into client.nb by its index
            code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
            began = time.perf_counter()
            for index, cell in code:
                cell.outputs = []
                cell_began = time.perf_counter()
                try:
                    client.execute_cell(cell, index)
                    cell_seconds[(run, index)] = round(time.perf_counter() - cell_began, 1)
                except CellExecutionError as err:
                    failure = (f"{path.name}, {run}, cell {index} (code cell "
                               f"{[i for i, _ in code].index(index)}): {err.ename}: {err.evalue}")
                    break
            if failure:
                break
            seconds.append(round(time.perf_counter() - began, 1))
    if failure:
        error = RerunError(failure)
        error.completed_first_run = bool(seconds)
        raise error
    return {"first_s": seconds[0], "second_s": seconds[1], "cell_s": cell_seconds}


def main() -> None:
    numbers = sys.argv[1:]
    for path in [p for p in series() if not numbers or p.name[:2] in numbers]:
        result = run_twice(path)
        slowest = sorted(result["cell_s"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{path.name}: first run {result['first_s']:.0f} s, second run "
              f"{result['second_s']:.0f} s; slowest cells (run, index: s): "
              + ", ".join(f"{run}, {i}: {t}" for (run, i), t in slowest), flush=True)


if __name__ == "__main__":
    main()
