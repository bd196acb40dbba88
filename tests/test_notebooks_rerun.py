"""Every notebook under smoke, in series order (later ones read earlier ones' runs/smoke/ artifacts):
top to bottom, then every code cell again in the same kernel. This is `make test`'s notebook run."""
import nbformat
import pytest

from helpers.tools.notebook_check import RerunError, run_twice
from helpers.tools.series import series


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
    assert not err.value.completed_first_run


@pytest.mark.parametrize("path", series(), ids=lambda p: p.name)
def test_notebook_runs_twice(path, smoke_env):
    result = run_twice(path)
    print(f"{path.name}: first run {result['first_s']:.0f} s, second run {result['second_s']:.0f} s")
