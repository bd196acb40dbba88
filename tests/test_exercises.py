"""Exercises: the learner's open cell first, the answer in a markdown fold after it that no Run All
executes, and every answer still run by the tests."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.course.exercises import (
    TAG,
    is_solution,
    solution_code,
    solution_markdown,
    with_solutions,
)
from helpers.tools.notebook_check import run_twice
from helpers.tools.series import series


def fold(code: str, note: str = "") -> nbformat.NotebookNode:
    return new_markdown_cell(solution_markdown(code, note), metadata={"tags": [TAG]})


def test_a_fold_gives_back_exactly_its_code():
    text = solution_markdown("x = 2\nprint(x * 3)\n", note="Doubling, then tripling.")
    assert text.startswith("<details><summary>Solution") and text.endswith("</details>")
    assert "Doubling, then tripling." in text
    assert solution_code(text) == "x = 2\nprint(x * 3)\n"


@pytest.mark.parametrize("text", ["no code here", "```python\na\n```\n```python\nb\n```"])
def test_a_fold_without_exactly_one_block_is_refused(text):
    with pytest.raises(ValueError, match="exactly one"):
        solution_code(text)


def test_with_solutions_puts_each_answer_right_after_its_fold():
    nb = new_notebook(cells=[new_code_cell("n = 1  # TODO: try 2"), fold("n = 2\nprint(n)"),
                             new_markdown_cell("next"), new_code_cell("m = n")])
    run = with_solutions(nb)
    assert [c.cell_type for c in run.cells] == ["code", "markdown", "code", "markdown", "code"]
    assert run.cells[2].source == "n = 2\nprint(n)\n" and is_solution(run.cells[2])
    assert len(nb.cells) == 4  # the notebook itself is left as it was
    nbformat.validate(run)


def test_the_rerun_check_executes_the_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANIZER_PRESET", "smoke")
    nb = new_notebook(cells=[new_code_cell("n = 1  # TODO"), fold("assert n == 2, 'wrong answer'")])
    path = tmp_path / "99_t.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="wrong answer"):
        run_twice(path, timeout=60)


def test_the_first_run_is_the_learners_notebook_and_the_second_adds_the_answers(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("HUMANIZER_PRESET", "smoke")
    nb = new_notebook(cells=[new_code_cell("n = 1  # TODO"), fold("n = 2"),
                             new_code_cell("print(n)")])
    path = tmp_path / "99_t.ipynb"
    nbformat.write(nb, path)
    result = run_twice(path, timeout=60)
    assert sorted(result["cell_s"]) == [("first run", 0), ("first run", 2), ("second run", 0),
                                        ("second run", 2), ("second run", 3)]


@pytest.mark.parametrize("path", series(), ids=lambda p: p.name)
def test_no_answer_is_a_code_cell_and_each_follows_an_open_cell(path):
    """`make run` and Run All execute code cells: an answer in one would print before the learner
    predicts. Each fold follows the learner's open cell (a code cell with a # TODO)."""
    cells = nbformat.read(path, as_version=4).cells
    assert not [i for i, c in enumerate(cells) if c.cell_type == "code" and is_solution(c)]
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and is_solution(cell):
            solution_code(cell.source)
            assert i > 0 and cells[i - 1].cell_type == "code" and "# TODO" in cells[i - 1].source, \
                f"{path.name}: the fold at cell {i} does not follow an open # TODO cell"


@pytest.mark.parametrize("path", series(), ids=lambda p: p.name)
def test_each_open_ended_exercise_comes_with_an_open_starter_cell(path):
    """A 🦁 exercise has no single answer, so no fold; the learner still gets a runnable first step."""
    cells = nbformat.read(path, as_version=4).cells
    lions = [i for i, c in enumerate(cells)
             if c.cell_type == "markdown" and c.source.lstrip("* ").startswith("🦁")]
    assert lions, f"{path.name} has no 🦁 exercise"
    for i in lions:
        starter = cells[i + 1] if i + 1 < len(cells) else None
        assert starter is not None and starter.cell_type == "code" and "# TODO" in starter.source, \
            f"{path.name}: the 🦁 exercise at cell {i} is not followed by an open # TODO cell"
