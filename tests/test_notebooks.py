"""Committed notebooks: no outputs, a papermill parameters cell first, a header saying what they do."""
import ast
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


MAX_CELL_LINES = 15  # a learner reads a cell at a glance; longer logic belongs in helpers/


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_names_the_experiment_and_get_config_the_notebook(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert 'os.environ.get("HUMANIZER_EXPERIMENT", "")' in code[0], \
        f"{path.name}: parameters cell must set EXPERIMENT from HUMANIZER_EXPERIMENT"
    call = f'get_config(PRESET, experiment=EXPERIMENT, notebook="{path.name[:2]}", **OVERRIDES)'
    assert any(call in source for source in code), f"{path.name}: no cell builds cfg = {call}"


def imports_only(source: str) -> bool:
    """A cell of imports only: the list of what the notebook uses, exempt from the length limit."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_are_short_and_solutions_collapsed(path):
    nb = nbformat.read(path, as_version=4)
    cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    long = {i: n for i, c in cells if not imports_only(c.source)
            and (n := sum(1 for line in c.source.splitlines() if line.strip())) > MAX_CELL_LINES}
    assert not long, f"{path.name}: cells longer than {MAX_CELL_LINES} lines (cell: lines): {long}"
    open_solutions = [i for i, c in cells if "solution" in c.metadata.get("tags", [])
                      and not c.metadata.get("jupyter", {}).get("source_hidden")]
    assert not open_solutions, f"{path.name}: solution cells {open_solutions} are not collapsed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_issue_numbers_in_notebooks(path):
    import re

    nb = nbformat.read(path, as_version=4)
    hits = [i for i, c in enumerate(nb.cells) if re.search(r"\bissue\s*#?\d", c.source, re.I)]
    assert not hits, f"{path.name}: cells {hits} mention an issue number; say what the thing is"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_fields_a_notebook_names_belong_to_its_declared_stages(path):
    """get_config(notebook=) trusts NOTEBOOK_STAGES: a `cfg.<field>` in a notebook's cells whose
    stage it does not declare would make overriding that field warn wrongly."""
    import re

    from helpers.core.config import NOTEBOOK_STAGES, STAGES, ModelSettings, stage_fields

    nb = nbformat.read(path, as_version=4)
    declared = {name for stage in (ModelSettings, *NOTEBOOK_STAGES[path.name[:2]])
                for name in stage_fields(stage)}
    fields = {name for stage in STAGES for name in stage_fields(stage)}
    named = {m for c in nb.cells if c.cell_type == "code"
             for m in re.findall(r"\bcfg\.(\w+)", c.source) if m in fields}
    missing = sorted(named - declared)
    assert not missing, (f"{path.name} reads {missing}, whose stages NOTEBOOK_STAGES"
                         f"[{path.name[:2]!r}] does not declare")


def test_one_kernel_for_jupyterlab_papermill_and_the_tests():
    """The notebooks name the kernel that `make setup` registers (OpenBLAS preloaded), so a learner
    opening one from `make lab` gets it without choosing, and every runner uses the same one."""
    from helpers.tools.series import KERNEL

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert f"ipykernel install --sys-prefix --name {KERNEL} " in makefile
    for path in NOTEBOOKS:
        assert nbformat.read(path, as_version=4).metadata.kernelspec.name == KERNEL, path.name


NOT_IN_CODE = ("README", "None  #", "filled from")  # a number copied from docs, or a placeholder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_expected_results_are_read_from_the_runs_json_not_copied(path):
    """A closing cell prints what a run measured (runs/.../*.json), never a README number or a
    placeholder to fill by hand: those go stale, the runs' own files do not."""
    nb = nbformat.read(path, as_version=4)
    hits = [(i, s) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for s in NOT_IN_CODE if s in c.source]
    assert not hits, f"{path.name}: code cells name {hits}"
