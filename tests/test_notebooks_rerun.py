"""Every notebook under smoke, in series order (later ones read earlier ones' runs/smoke/ artifacts):
top to bottom, then every code cell again in the same kernel. This is `make test`'s notebook run.
The Config fields each notebook read are checked against helpers/core/config.py's FIELDS_READ."""
import nbformat
import pytest

from helpers.core import config
from helpers.tools.notebook_check import RerunError, number, run_twice, series

FIELDS_TRACED = {}  # notebook number -> fields it read, filled by test_notebook_runs_twice


@pytest.fixture
def smoke_env(monkeypatch):
    monkeypatch.setenv("HUMANIZER_PRESET", "smoke")
    monkeypatch.delenv("HUMANIZER_EXPERIMENT", raising=False)


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t")]
                                  + [nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def test_a_cell_that_breaks_on_rerun_is_named(tmp_path, smoke_env):
    path = write_notebook(tmp_path / "99_t.ipynb", "import os", "os.mkdir('made')", "x = 1")
    with pytest.raises(RerunError, match=r"99_t.ipynb, second run, cell 2 \(code cell 1\): "
                                         r"FileExistsError: .*'made'"):
        run_twice(path, timeout=60)
    assert (tmp_path / "made").is_dir()  # the kernel ran in the notebook's folder
    broken = write_notebook(tmp_path / "98_t.ipynb", "x = 1", "y = undefined_name")
    with pytest.raises(RerunError, match=r"first run, cell 2 \(code cell 1\): NameError") as err:
        run_twice(broken, timeout=60)
    assert not err.value.completed_first_run and err.value.fields == []


def test_reads_are_traced(tmp_path, smoke_env):
    path = write_notebook(tmp_path / "99_t.ipynb",
                          "from helpers.core.config import get_config\ncfg = get_config('smoke')",
                          "steps = cfg.sft_steps * 2")
    result = run_twice(path, timeout=60)
    assert result["fields"] == ["sft_steps"] and result["first_s"] >= 0


@pytest.mark.parametrize("path", series(), ids=lambda p: p.name)
def test_notebook_runs_twice(path, smoke_env):
    try:
        result = run_twice(path)
    except RerunError as err:
        if err.completed_first_run:  # every cell ran once: its reads are complete
            FIELDS_TRACED[number(path)] = tuple(err.fields)
        raise
    FIELDS_TRACED[number(path)] = tuple(result["fields"])
    print(f"{path.name}: first run {result['first_s']:.0f} s, second run {result['second_s']:.0f} s;"
          f" Config fields read: {tuple(result['fields'])}")


def test_fields_read_map_is_up_to_date():
    if not FIELDS_TRACED:
        pytest.skip("no notebook ran in this session")
    stale = {nb: fields for nb, fields in FIELDS_TRACED.items()
             if config.FIELDS_READ.get(nb) != fields}
    assert not stale, ("helpers/core/config.py FIELDS_READ is out of date; these notebooks read:\n"
                       + "\n".join(f'    "{nb}": {fields},' for nb, fields in stale.items()))
