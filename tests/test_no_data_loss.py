"""The rule every command that writes follows (helpers/core/owned.py): nothing a user points it at is
deleted, truncated or replaced. Each command runs under smoke against something already at each
path it writes (an empty folder, a folder with user files, a file without a trailing newline, a
JSONL of another tool, a symlink to its input, a read-only file), against a second run at once,
and under SIGKILL; every byte, mode and link that was there before must be there after, unless it
was the command's own marked output and --overwrite asked for it. The module prints how many
cases it tried and in how many something was lost."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_humanize import SLOW_RUN, FakeHumanizer, read_rows, write_jsonl

from helpers.core import config
from helpers.tools import export, rewrite_files, series, update_docs

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ("empty_folder", "user_folder", "no_newline_file", "other_tool_jsonl",
           "symlink_to_input", "read_only_file")
TALLY = {"tried": 0, "lost": 0}


def plant(kind: str, path: Path, the_input: Path) -> None:
    """Put the user's thing of `kind` at `path` (the path a command is about to write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty_folder":
        path.mkdir()
    elif kind == "user_folder":
        (path / "sub").mkdir(parents=True)
        (path / "chapter1.txt").write_text("x\n")
        (path / "sub" / "data.csv").write_text("y\n")
    elif kind == "no_newline_file":
        path.write_text('{"precious": true, "settings": [1,2,3]}')
    elif kind == "other_tool_jsonl":
        path.write_text('{"name": "a", "score": 1}\n{"name": "b", "score": 2}\n')
    elif kind == "symlink_to_input":
        path.symlink_to(the_input)
    elif kind == "read_only_file":
        path.write_text("keep me\n")
        path.chmod(0o444)


def snapshot(root: Path) -> dict:
    """Every path under `root`: a link's target, a folder's mode, a file's mode and digest."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode & 0o7777
            if path.is_symlink():
                seen[path.relative_to(root).as_posix()] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[path.relative_to(root).as_posix()] = ("dir", mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                seen[path.relative_to(root).as_posix()] = ("file", mode, digest)
    return seen


def assert_kept(before: dict, root: Path, replaced: tuple = ()) -> None:
    """Nothing of `before` changed or went, but the own outputs the user asked to replace."""
    after = snapshot(root)
    lost = sorted(p for p, state in before.items() if p not in replaced and after.get(p) != state)
    TALLY["tried"] += 1
    TALLY["lost"] += bool(lost)
    assert not lost, f"changed or gone: {lost}"


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nno data loss: {TALLY['tried']} cases tried, {TALLY['lost']} lost")


@pytest.fixture
def runs_root(smoke_run, monkeypatch):
    """The smoke run's runs/ (trained adapters) as RUNS_ROOT, for commands run in-process."""
    monkeypatch.setattr(config, "RUNS_ROOT", smoke_run[3].parent)
    monkeypatch.delenv("HUMANIZER_EXPERIMENT", raising=False)
    return smoke_run[3].parent


def hostile_case(tmp_path, kind, name, the_input):
    case = tmp_path / "case"
    case.mkdir(exist_ok=True)
    plant(kind, case / name, the_input)
    return case, snapshot(case)


def one_line_error(err: str, *words) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


# ---------------------------------------------------------------- humanize

HUMANIZE_EXIT = {"jsonl": dict.fromkeys(HOSTILE, 4), "text": dict.fromkeys(HOSTILE, 4),
                 "marker": dict.fromkeys(HOSTILE, 4),
                 # a file already at the lock's name is only locked, never written: no refusal
                 "lock": {**dict.fromkeys(HOSTILE, 0), "empty_folder": 4, "user_folder": 4,
                          "read_only_file": 0 if os.geteuid() == 0 else 4}}
HUMANIZE_TARGETS = {"jsonl": ("out.jsonl", "out.jsonl"), "text": ("out.md", "out.md"),
                    "marker": ("out.jsonl", ".out.jsonl.outputs.json"),
                    "lock": ("out.jsonl", ".out.jsonl.lock")}


@pytest.mark.parametrize("target", HUMANIZE_TARGETS)
@pytest.mark.parametrize("kind", HOSTILE)
def test_humanize_keeps_what_is_at_its_paths(smoke_run, tmp_path, capsys, target, kind):
    output, planted = HUMANIZE_TARGETS[target]
    the_input = tmp_path / "case" / ("draft.md" if target == "text" else "drafts.jsonl")
    the_input.parent.mkdir()
    if target == "text":
        the_input.write_text("The council met on 3 May.\n")
    else:
        write_jsonl(the_input, [{"id": "a", "text": "The council met on 3 May."}])
    case, before = hostile_case(tmp_path, kind, planted, the_input)
    code = rewrite_files.main(["--input", str(the_input), "--output", str(case / output),
                          "--preset", "smoke", "--no-progress"], humanizer=smoke_run[1])
    assert code == HUMANIZE_EXIT[target][kind], capsys.readouterr().err
    if code:
        one_line_error(capsys.readouterr().err, str(case))
    assert_kept(before, case)


def test_humanize_replaces_its_own_text_output_only_with_overwrite(smoke_run, tmp_path, capsys):
    the_input, out = tmp_path / "draft.md", tmp_path / "out.md"
    the_input.write_text("The council met on 3 May.\n")
    args = ["--input", str(the_input), "--output", str(out), "--no-progress"]
    assert rewrite_files.main(args, humanizer=smoke_run[1]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert rewrite_files.main(args, humanizer=smoke_run[1]) == 4
    assert "pass --overwrite" in capsys.readouterr().err
    assert_kept(before, tmp_path)
    out.write_text(out.read_text() + "my edit\n")  # edited since: no longer humanize's own
    before = snapshot(tmp_path)
    assert rewrite_files.main(args + ["--overwrite"], humanizer=smoke_run[1]) == 4
    assert "changed since helpers.tools.rewrite_files wrote it" in capsys.readouterr().err
    assert_kept(before, tmp_path)


def test_humanize_starts_over_on_its_own_jsonl_only_with_overwrite(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "one"}])
    out, other = tmp_path / "out.jsonl", tmp_path / "other.jsonl"
    args = ["--input", str(src), "--no-progress", "--overwrite", "--output"]
    assert rewrite_files.main(args + [str(out)], humanizer=FakeHumanizer()) == 0
    plant("other_tool_jsonl", other, src)
    before = snapshot(tmp_path)
    assert rewrite_files.main(args + [str(other)], humanizer=FakeHumanizer()) == 4
    one_line_error(capsys.readouterr().err, "other.jsonl: exists and was not written by")
    assert_kept(before, tmp_path)
    write_jsonl(src, [{"id": "b", "text": "two"}])
    assert rewrite_files.main(args + [str(out)], humanizer=FakeHumanizer()) == 0
    assert [r["id"] for r in read_rows(out)] == ["b"]  # replaced, not appended to
    assert_kept(before, tmp_path, replaced=("out.jsonl", "in.jsonl"))


def test_the_no_newline_file_of_the_report_is_kept(tmp_path, capsys):
    """The report's reproduction: a config.json without a trailing newline as --output."""
    src = write_jsonl(tmp_path / "good.jsonl", [{"id": 1, "text": "a draft"}])
    precious = tmp_path / "config.json"
    precious.write_text('{"precious": true, "settings": [1,2,3]}')
    before = snapshot(tmp_path)
    fake = FakeHumanizer()
    assert rewrite_files.main(["--input", str(src), "--output", str(precious), "--no-progress"],
                         humanizer=fake) == 4
    one_line_error(capsys.readouterr().err, "config.json", "not a humanize output")
    assert_kept(before, tmp_path)
    assert fake.calls == []


def start_slow_run(src: Path, out: Path, delay: float = 0.3) -> subprocess.Popen:
    script = SLOW_RUN.format(repo=str(REPO), tests=str(REPO / "tests")).replace(
        "delay=0.5", f"delay={delay}")
    return subprocess.Popen([sys.executable, "-c", script, "--input", str(src), "--output",
                             str(out), "--batch-size", "1", "--no-progress"],
                            stderr=subprocess.PIPE, text=True)


def wait_for_rows(proc, out: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= n):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)


def test_a_second_humanize_run_on_an_output_in_use_is_refused_at_once(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": f"draft {i}"}
                                              for i in range(8)])
    out = tmp_path / "out.jsonl"
    proc = start_slow_run(src, out)
    wait_for_rows(proc, out, 1)
    second = FakeHumanizer()
    started = time.monotonic()
    assert rewrite_files.main(["--input", str(src), "--output", str(out), "--no-progress"],
                         humanizer=second) == 4
    assert time.monotonic() - started < 5 and second.calls == []
    one_line_error(capsys.readouterr().err, "another humanize run is writing it now")
    assert proc.wait(timeout=60) == 0
    ids = [r["id"] for r in read_rows(out)]
    assert ids == [f"d{i}" for i in range(8)]  # every row once
    TALLY["tried"] += 1


def test_sigkill_during_a_write_keeps_every_earlier_byte_and_its_lock_goes_stale(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": f"draft {i}"}
                                              for i in range(10)])
    out = tmp_path / "out.jsonl"
    assert rewrite_files.main(["--input", str(write_jsonl(tmp_path / "first.jsonl", [
        {"id": "d0", "text": "draft 0"}])), "--output", str(out), "--no-progress"],
        humanizer=FakeHumanizer()) == 0
    (tmp_path / "notes.txt").write_text("mine, beside the output")
    earlier = out.read_bytes()
    before = snapshot(tmp_path)
    proc = start_slow_run(src, out)
    wait_for_rows(proc, out, 4)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert out.read_bytes().startswith(earlier)  # appended to, nothing earlier touched
    assert_kept(before, tmp_path, replaced=("out.jsonl",))
    fake = FakeHumanizer()  # the killed run's lock does not block
    assert rewrite_files.main(["--input", str(src), "--output", str(out), "--no-progress"],
                         humanizer=fake) == 0
    assert [r["id"] for r in read_rows(out)] == [f"d{i}" for i in range(10)]


def test_repeated_rows_already_in_an_output_are_reported_on_resume(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "one"}])
    out = tmp_path / "out.jsonl"
    assert rewrite_files.main(["--input", str(src), "--output", str(out), "--no-progress"],
                         humanizer=FakeHumanizer()) == 0
    out.write_text(out.read_text() * 2)
    assert rewrite_files.main(["--input", str(src), "--output", str(out), "--no-progress"],
                         humanizer=FakeHumanizer()) == 0
    assert ("nothing to rewrite: 1 of 1 documents already in" in (err := capsys.readouterr().err)
            and "holds 1 repeated row (ids 'a')" in err)


# ---------------------------------------------------------------- export

GGUF_EXIT = {"gguf": {**dict.fromkeys(HOSTILE, 4), "empty_folder": 2, "user_folder": 2},
             "modelfile": dict.fromkeys(HOSTILE, 4), "marker": dict.fromkeys(HOSTILE, 4)}
GGUF_TARGETS = {"gguf": "x.gguf", "modelfile": "Modelfile", "marker": ".x.gguf.outputs.json"}


@pytest.mark.parametrize("target", GGUF_TARGETS)
@pytest.mark.parametrize("kind", HOSTILE)
def test_gguf_export_keeps_what_is_at_its_paths(runs_root, tmp_path, capsys, target, kind):
    the_input = runs_root / "smoke" / "adapters" / "sft" / "adapters.safetensors"
    case, before = hostile_case(tmp_path, kind, GGUF_TARGETS[target], the_input)
    code = export.main(["--format", "gguf", "--preset", "smoke", "--out", str(case / "x.gguf")])
    assert code == GGUF_EXIT[target][kind]
    one_line_error(capsys.readouterr().err, str(case))
    assert_kept(before, case)


MLX_EXIT = {**dict.fromkeys(HOSTILE, 4), "empty_folder": 0}


@pytest.mark.parametrize("kind", HOSTILE)
def test_mlx_export_keeps_what_is_at_its_path(runs_root, tmp_path, capsys, kind):
    case, before = hostile_case(tmp_path, kind, "fused", runs_root / "smoke" / "adapters")
    code = export.main(["--format", "mlx", "--preset", "smoke", "--out", str(case / "fused")])
    assert code == MLX_EXIT[kind]
    if code:
        one_line_error(capsys.readouterr().err, str(case / "fused"))
    else:  # the empty folder now holds the export, and its manifest lists every file
        listed = json.loads((case / "fused" / ".outputs.json").read_text())["files"]
        assert sorted(listed) == sorted(p.name for p in (case / "fused").iterdir()
                                        if p.name != ".outputs.json")
        assert "model.safetensors" in listed and "config.json" in listed
    assert_kept(before, case)


def test_mlx_export_refuses_a_folder_whose_manifest_is_not_its_own(runs_root, tmp_path, capsys):
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / ".outputs.json").write_text('{"my": "settings"}')
    before = snapshot(tmp_path)
    assert export.main(["--format", "mlx", "--preset", "smoke", "--out",
                        str(tmp_path / "fused")]) == 4
    one_line_error(capsys.readouterr().err, "not a manifest of mlx model export")
    assert_kept(before, tmp_path)


def test_mlx_export_into_the_earlier_gguf_export_folder_is_refused(runs_root, capsys):
    """The report's reproduction: --out runs/smoke/export, which holds a GGUF export."""
    folder = runs_root / "smoke" / "export"
    (folder / "humanizer-sft-dpo-f16").mkdir(parents=True, exist_ok=True)
    (folder / "humanizer-sft-dpo-f16" / "humanizer-sft-dpo-f16.gguf").write_bytes(b"GGUF....")
    before = snapshot(folder)
    assert export.main(["--format", "mlx", "--preset", "smoke", "--out", str(folder)]) == 4
    one_line_error(capsys.readouterr().err, "a folder with files mlx model export did not write")
    assert_kept(before, folder)


def test_gguf_export_replaces_only_its_own_unchanged_files_on_overwrite(runs_root, tmp_path,
                                                                       capsys):
    out = tmp_path / "x.gguf"
    args = ["--format", "gguf", "--preset", "smoke", "--out", str(out)]
    assert export.main(args) == 0
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert export.main(args) == 4  # a second export is not a silent replacement
    one_line_error(capsys.readouterr().err, "pass --overwrite")
    assert_kept(before, tmp_path)
    assert export.main(args + ["--overwrite"]) == 0
    assert_kept(before, tmp_path, replaced=("x.gguf", "Modelfile", ".x.gguf.outputs.json"))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(modelfile.read_text() + "PARAMETER num_ctx 4096\n")  # hand-edited
    before = snapshot(tmp_path)
    assert export.main(args + ["--overwrite"]) == 4
    one_line_error(capsys.readouterr().err, "Modelfile: changed since helpers.tools.export wrote it")
    assert_kept(before, tmp_path)


KILLED_EXPORT = """
import sys
sys.path[:0] = [{repo!r}]
from pathlib import Path
from helpers.core import config
from helpers.tools import export
config.RUNS_ROOT = Path({runs!r})
sys.exit(export.main(sys.argv[1:]))
"""


def test_sigkill_during_an_export_leaves_the_old_files_whole(runs_root, tmp_path):
    (tmp_path / "Modelfile.old").write_text("mine")
    before = snapshot(tmp_path)
    script = KILLED_EXPORT.format(repo=str(REPO), runs=str(runs_root))
    proc = subprocess.Popen([sys.executable, "-c", script, "--format", "gguf", "--preset", "smoke",
                             "--out", str(tmp_path / "x.gguf")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".x.gguf.*.tmp")):  # killed while the GGUF is being written
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "Modelfile").exists()
    assert_kept(before, tmp_path)


# ---------------------------------------------------------------- short errors

@pytest.mark.parametrize("argv, code, words", [
    (["--preset", "nosuch"], 2, "Unknown preset 'nosuch'"),
    (["--preset", "smoke"], 3, "no SFT adapter for preset 'smoke'"),
])
def test_export_user_errors_are_one_line_with_their_code(tmp_path, monkeypatch, capsys, argv,
                                                         code, words):
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "untrained")
    assert export.main(["--format", "gguf", "--out", str(tmp_path / "x.gguf"), *argv]) == code
    one_line_error(capsys.readouterr().err, words)
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------- series

def tiny_series(folder: Path, fail: bool = False) -> Path:
    """One notebook: it runs, or stops as a notebook does offline without the model."""
    import nbformat

    folder.mkdir(exist_ok=True)
    source = ("from helpers.core.models import ModelNotAvailable\nraise ModelNotAvailable("
              "\"Cannot load 'some/model': offline and no copy; set HUMANIZER_ASSETS\")"
              if fail else "x = 1")
    parameters = nbformat.v4.new_code_cell('PRESET, EXPERIMENT, OVERRIDES = "smoke", "", {}')
    parameters.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell(source)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    nbformat.write(book, folder / "00_tiny.ipynb")
    return folder


@pytest.fixture
def series_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.setattr(series, "NOTEBOOKS", tiny_series(tmp_path / "books"))
    monkeypatch.setenv("HUMANIZER_PRESET", "smoke")
    monkeypatch.setenv("HUMANIZER_EXPERIMENT", "")
    return tmp_path / "runs" / "smoke"


SERIES_TARGETS = {"copy": "notebooks/00_tiny.ipynb", "timing": "series_timing.json"}


@pytest.mark.parametrize("target", SERIES_TARGETS)
@pytest.mark.parametrize("kind", HOSTILE)
def test_series_keeps_what_is_at_its_paths(series_runs, capsys, target, kind):
    (series_runs / "notebooks").mkdir(parents=True)
    plant(kind, series_runs / SERIES_TARGETS[target], series.NOTEBOOKS / "00_tiny.ipynb")
    before = snapshot(series_runs)
    assert series.main(["--preset", "smoke", "--overwrite"]) == 4
    one_line_error(capsys.readouterr().err, str(series_runs / SERIES_TARGETS[target]))
    assert_kept(before, series_runs)


def test_series_replaces_its_own_copies_with_overwrite_and_puts_a_notebook_error_on_top(
        series_runs, capsys):
    assert series.main(["--preset", "smoke"]) == 0
    (series_runs / "notebooks" / "mine.txt").write_text("mine")
    before = snapshot(series_runs)
    assert series.main(["--preset", "smoke"]) == 4  # its own earlier run: only with --overwrite
    one_line_error(capsys.readouterr().err, "pass --overwrite")
    assert_kept(before, series_runs)
    tiny_series(series.NOTEBOOKS, fail=True)
    assert series.main(["--preset", "smoke", "--overwrite"]) == 3
    err = capsys.readouterr().err  # the kernel may warn first; then the series' two lines
    assert "Traceback" not in err and err.splitlines()[-2:] == [
        "error: 00_tiny.ipynb failed in cell [3]: ModelNotAvailable: Cannot load 'some/model': "
        "offline and no copy; set HUMANIZER_ASSETS",
        f"the executed notebook, with the traceback, is {series_runs}/notebooks/00_tiny.ipynb"]
    copy = (series_runs / "notebooks" / "00_tiny.ipynb").read_text()
    assert "ModelNotAvailable" in copy  # the executed copy keeps the whole traceback
    assert_kept(before, series_runs, replaced=("notebooks/00_tiny.ipynb",
                                               "notebooks/.outputs.json"))


def test_series_takes_the_copies_of_runs_before_manifests_for_its_own(series_runs, capsys):
    """A copy papermill executed and a timing record with its machine: replaced with
    --overwrite only; a notebook without papermill's metadata stays refused."""
    (series_runs / "notebooks").mkdir(parents=True)
    copy, timing = series_runs / "notebooks" / "00_tiny.ipynb", series_runs / "series_timing.json"
    copy.write_text(json.dumps({"cells": [], "metadata": {"papermill": {}}}))
    timing.write_text(json.dumps({"total": 1.0, "machine": {}}))
    before = snapshot(series_runs)
    assert series.main(["--preset", "smoke"]) == 4
    one_line_error(capsys.readouterr().err, "pass --overwrite")
    assert_kept(before, series_runs)
    assert series.main(["--preset", "smoke", "--overwrite"]) == 0
    assert "papermill" in json.loads(copy.read_text())["metadata"]
    copy.write_text(json.dumps({"cells": [], "metadata": {}}))
    (series_runs / "notebooks" / ".outputs.json").unlink()
    before = snapshot(series_runs)
    assert series.main(["--preset", "smoke", "--overwrite"]) == 4
    assert_kept(before, series_runs)


# ---------------------------------------------------------------- make readme

README_EXIT = {**dict.fromkeys(HOSTILE, 4), "no_newline_file": 2, "other_tool_jsonl": 2}


@pytest.mark.parametrize("kind", HOSTILE)
def test_make_readme_keeps_what_is_at_its_path(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setattr(config, "RUNS_ROOT", tmp_path / "runs")
    the_input = tmp_path / "case" / "results.md"
    the_input.parent.mkdir()
    the_input.write_text("| results |\n")
    case, before = hostile_case(tmp_path, kind, "README.md", the_input)
    assert update_docs.main(["--preset", "smoke"], docs=[case / "README.md"]) == README_EXIT[kind]
    one_line_error(capsys.readouterr().err, str(case / "README.md"))
    assert_kept(before, case)
