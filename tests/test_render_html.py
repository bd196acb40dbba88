"""helpers.tools.render_html on a tiny executed series: a page with a plot, a page with an error."""
from __future__ import annotations

import base64
import re
import struct
import zlib

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers.tools import render_html

TRACEBACK = ["\x1b[0;31m" + "-" * 75 + "\x1b[0m",
             "\x1b[0;31mZeroDivisionError\x1b[0m          Traceback (most recent call last)",
             "Cell \x1b[0;32mIn[7], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m 1/0",
             "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"]


def png(width: int = 4, height: int = 3) -> bytes:
    """A real PNG: `width` x `height` red RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


PNG_B64 = base64.b64encode(png()).decode()


def plot_notebook():
    return new_notebook(cells=[
        new_markdown_cell("Intro text\n\n# 00 · Plots: a red square\n\nmore"),
        new_code_cell("show()", execution_count=1, outputs=[
            new_output("stream", name="stderr", text="FutureWarning: x is deprecated\n"),
            new_output("display_data", data={"image/png": PNG_B64, "text/plain": "<Figure>"})]),
    ])


def failing_notebook():
    return new_notebook(cells=[
        new_markdown_cell("## 01 · Fails"),
        new_code_cell("1/0", execution_count=7, outputs=[
            new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                       traceback=TRACEBACK)]),
    ])


NAMES = ["00_plots.ipynb", "01_fails.ipynb"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """runs/smoke/ with the two executed notebooks and a timing record; the series' notebooks/
    folder names the same two."""
    series = tmp_path / "notebooks"
    run_dir = tmp_path / "runs" / "smoke"
    (run_dir / "notebooks").mkdir(parents=True)
    series.mkdir()
    for name, nb in zip(NAMES, (plot_notebook(), failing_notebook())):
        nbformat.write(nb, run_dir / "notebooks" / name)
        nbformat.write(new_notebook(), series / name)
    (run_dir / "series_timing.json").write_text('{"00_plots.ipynb": 75.0, "total": 80.0}')
    monkeypatch.setattr("helpers.core.config.RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(render_html, "NOTEBOOKS", series)
    return run_dir


def test_pages_embed_the_image_and_the_index_lists_them_in_order(runs):
    out, errors = render_html.render(runs, NAMES, "smoke", "make run PRESET=smoke")
    page = (out / "00_plots.html").read_text()
    assert f"data:image/png;base64,{PNG_B64}" in page
    assert "<title>00 · Plots: a red square</title>" in page
    index = (out / "index.html").read_text()
    assert re.findall(r'href="([^"]+)"', index) == ["00_plots.html", "01_fails.html"]
    assert ">00 · Plots: a red square</a><span class=\"time\">1 min 15 s</span>" in index
    assert ">01 · Fails</a><span class=\"time\"> <span class=\"error\">1 error output" in index
    assert [(e.notebook, e.index, e.execution_count, e.ename) for e in errors] == [
        ("01_fails.ipynb", 2, 7, "ZeroDivisionError")]


def test_an_error_output_is_exit_1_naming_the_notebook_and_cell(runs, capsys):
    assert render_html.main(["--preset", "smoke"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: 01_fails.ipynb: cell [7] (cell 2 of the notebook) has an error "
                   "output: ZeroDivisionError: division by zero\n")
    assert sorted(p.name for p in (runs / "html").iterdir()) == [
        ".outputs.json", "00_plots.html", "01_fails.html", "index.html"]


def test_a_missing_notebook_is_exit_3_naming_make_run(runs, capsys):
    (runs / "notebooks" / "01_fails.ipynb").unlink()
    assert render_html.main(["--preset", "smoke"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "01_fails.ipynb: the executed notebook is missing" in err
    assert ("(make run PRESET=smoke), or render fewer notebooks (--upto 00, make html UPTO=00)"
            in err)
    assert not (runs / "html").exists()
    assert render_html.main(["--preset", "smoke", "--upto", "00"]) == 0


def test_a_users_index_is_never_replaced(runs, capsys):
    (runs / "html").mkdir()
    (runs / "html" / "index.html").write_text("my notes")
    assert render_html.main(["--preset", "smoke", "--overwrite"]) == 4
    err = capsys.readouterr().err
    assert "a folder with files helpers.tools.render_html did not write" in err
    assert (runs / "html" / "index.html").read_text() == "my notes"
    assert sorted(p.name for p in (runs / "html").iterdir()) == ["index.html"]


def test_own_pages_are_replaced_only_with_overwrite(runs, capsys):
    assert render_html.main(["--preset", "smoke"]) == 1
    assert render_html.main(["--preset", "smoke"]) == 4
    assert "pass --overwrite" in capsys.readouterr().err
    (runs / "html" / "index.html").write_text("edited by hand")
    assert render_html.main(["--preset", "smoke", "--overwrite"]) == 4
    assert (runs / "html" / "index.html").read_text() == "edited by hand"
    (runs / "html" / "index.html").unlink()
    assert render_html.main(["--preset", "smoke", "--overwrite"]) == 1


browser_check = pytest.importorskip("browser_check")


@pytest.mark.skipif(browser_check.find_chromium() is None,
                    reason="no Chromium found: apt-get install chromium (or set CHROMIUM)")
def test_a_real_browser_shows_the_plot_and_flags_the_error(runs, tmp_path):
    out, _ = render_html.render(runs, NAMES, "smoke", "make run PRESET=smoke")
    plots = browser_check.check(out / "00_plots.html", tmp_path / "00.png", expect_image=True)
    assert (plots["images"], plots["loaded"], plots["problems"]) == (1, 1, [])
    assert (tmp_path / "00.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fails = browser_check.check(out / "01_fails.html", tmp_path / "01.png", expect_image=True)
    assert fails["problems"] == ["error output shown: ZeroDivisionError: division by zero",
                                 "no image loaded (expected a plot)"]
