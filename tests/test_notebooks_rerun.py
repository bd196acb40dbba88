"""Every notebook under smoke, in series order (later ones read earlier ones' runs/smoke/ artifacts):
top to bottom as Run All does, then every code cell again in the same kernel with the exercises'
answers pasted in. This is `make test`'s notebook run."""
import os

import nbformat
import pytest

from helpers.tools import kit
from helpers.tools.notebook_check import RerunError, run_twice
from helpers.tools.series import series

from conftest import fresh_clone, learner_env, run_in


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


def test_a_kit_of_the_series_starts_notebook_06_alone(tmp_path, smoke_env):
    """After the series above: the instructor's kit of runs/smoke, unpacked in a learner's fresh
    clone and cut down to what kit.NEEDS says notebook 06 reads, runs 06 there; nothing of 00..05
    runs again."""
    packed = kit.pack("smoke", tmp_path / "kit.tar.gz", upto="06")
    clone = fresh_clone(tmp_path / "clone")
    env = learner_env(clone, HUMANIZER_ASSETS=os.environ["HUMANIZER_ASSETS"],
                      HUMANIZER_PRESET="smoke")
    unpacked = run_in(clone, env, "-m", "helpers.tools.kit", "unpack", str(packed))
    assert unpacked.returncode == 0, unpacked.stdout[-2000:]
    run = clone / "runs/smoke"
    for path in [p for p in run.rglob("*") if p.is_file()]:
        name = path.relative_to(run).as_posix()
        if not any(name == a or name.startswith(a + "/") for a in kit.NEEDS["06"]):
            path.unlink()  # our own temporary clone: 06 must make or do without all of it
    done = run_in(clone, env, "-m", "helpers.tools.series", "--preset", "smoke", "--only", "06")
    assert done.returncode == 0, done.stdout[-3000:]
    assert (run / "rewrites.jsonl").stat().st_size > 0
    assert [p.name for p in (run / "notebooks").glob("*.ipynb")] == ["06_stacked_inference.ipynb"]
