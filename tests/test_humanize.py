"""The command line, with a fake model of the Humanizer's shape (the last test: the real one)."""
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.infer.systems import SYSTEMS
from helpers.tools import rewrite_files

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Rewrite:
    text: str
    n_tokens: int
    hit_cap: bool


class FakeHumanizer:
    """Upper-cases each piece; one token per word; `cap` words or more 'hit the token cap'."""
    adapters = SYSTEMS

    def __init__(self, max_input_tokens=50, cap=None, crash_on_call=None, delay=0.0):
        self.max_input_tokens, self.cap = max_input_tokens, cap
        self.crash_on_call, self.delay, self.calls = crash_on_call, delay, []

    def count_tokens(self, text):
        return len(text.split())

    def rewrite_detailed(self, texts, adapter=None, system_prompt=None):
        self.calls.append((list(texts), adapter))
        if self.crash_on_call == len(self.calls):
            raise RuntimeError("model crashed")
        time.sleep(self.delay)
        capped = [self.cap is not None and len(t.split()) >= self.cap for t in texts]
        return [Rewrite(t.upper(), len(t.split()), c) for t, c in zip(texts, capped)]

    def texts(self):
        return [t for texts, _ in self.calls for t in texts]


def run(*args, humanizer=None):
    humanizer = FakeHumanizer() if humanizer is None else humanizer
    return rewrite_files.main([str(a) for a in args] + ["--no-progress"], humanizer=humanizer)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_good_input(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "first draft", "domain": "news"}, {"id": 7, "ai": "second draft"}, "",
        {"text": "  third draft  "}])
    out = tmp_path / "out.jsonl"
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, "--adapter", "sft", "--batch-size", 2,
               humanizer=fake) == 0
    common = {"preset": "smoke", "adapter": "sft", "hit_cap": False, "settings": {
        "fact_check_samples": 0, "fact_resample": True, "fact_repair": True}}
    assert read_rows(out) == [
        {"id": "a", "source": "first draft", "output": "FIRST DRAFT", **common, "domain": "news"},
        {"id": "7", "source": "second draft", "output": "SECOND DRAFT", **common},
        {"id": "4", "source": "third draft", "output": "THIRD DRAFT", **common},  # id = line number
    ]
    assert fake.calls == [(["first draft", "second draft"], "sft"), (["third draft"], "sft")]
    assert "wrote 3 rewrites" in capsys.readouterr().err


def test_bad_lines_bad_ids_and_duplicates_are_reported_by_file_and_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "ok1", "text": "keep me"}, "{not json", {"id": "x", "body": "wrong field"},
        {"id": "y", "text": "   "}, '["a", "list"]', {"id": "z", "text": 42},
        {"id": None, "text": "null id"}, {"id": ["l"], "text": "list id"},
        {"id": True, "text": "boolean id"}, {"id": "ok1", "text": "same id again"},
        {"id": "ok2", "ai": "keep me too"}])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out) == 1
    assert [r["id"] for r in read_rows(out)] == ["ok1", "ok2"]
    err = capsys.readouterr().err
    reasons = dict(line.removeprefix(f"{src}:").split(": skipped: ") for line in err.splitlines()
                   if line.startswith(f"{src}:"))
    assert list(reasons) == [str(n) for n in range(2, 11)]
    for line_no, why in [(2, "invalid JSON"), (3, "no 'text' (or 'ai') field"),
                         (4, "field 'text' is empty or not text"), (5, "expected a JSON object"),
                         (6, "field 'text' is empty or not text"),
                         (7, "'id' must be a string or a number, not null"),
                         (8, "'id' must be a string or a number, not a list"),
                         (9, "'id' must be a string or a number, not a boolean"),
                         (10, "duplicate id 'ok1' (kept the one on line 1)")]:
        assert reasons[str(line_no)].startswith(why)
    assert "skipped 9 input lines" in err


def test_gzip_input_without_a_gz_name_and_a_byte_order_mark(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(gzip.compress(b'\xef\xbb\xbf{"id": "a", "text": "draft"}\n'))
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out) == 0
    assert [r["output"] for r in read_rows(out)] == ["DRAFT"]


@pytest.mark.parametrize("problem, message", [
    ("missing", "nope.jsonl: file not found"),
    ("truncated", "in.jsonl.gz: truncated or corrupt gzip data"),
])
def test_unreadable_input_is_exit_2_and_writes_nothing(tmp_path, capsys, problem, message):
    src = tmp_path / ("nope.jsonl" if problem == "missing" else "in.jsonl.gz")
    if problem == "truncated":
        data = gzip.compress(b"".join(b'{"text": "draft %d"}\n' % i for i in range(500)))
        src.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out.jsonl"
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=fake) == 2
    assert not out.exists() and fake.calls == [] and message in capsys.readouterr().err


def test_usage_errors_are_exit_2(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    assert run("--input", src, "--preset", "nope") == 2
    assert "Unknown preset 'nope'" in capsys.readouterr().err
    assert run("--input", src, "--adapter", "merged") == 2
    assert run("--input", src, "--output", tmp_path / "o.jsonl.gz") == 2
    capsys.readouterr()
    assert run("--input", src, "--fact-check", "2", "--no-resample", "--no-fact-repair") == 2
    assert "leaves the fact check nothing to do" in capsys.readouterr().err
    assert run("--input", src, "--loop-check", "-1") == 2
    assert "--loop-check must be 0 or more, got -1" in capsys.readouterr().err


def test_the_loop_switch_is_recorded_and_resuming_without_it_is_refused(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 0, "text": "draft 0"}, {"id": 1, "text": "b"}])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out, "--batch-size", 1, "--loop-check", "2",
               humanizer=FakeHumanizer(crash_on_call=2)) == 5
    settings = read_rows(out)[0]["settings"]
    assert settings["loop_check_samples"] == 2 and settings["loop_check_choice"] == "facts"
    assert run("--input", src, "--output", out, "--loop-check", "0") == 4
    assert "--loop-check" in capsys.readouterr().err


def test_the_output_may_not_be_the_input(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    (tmp_path / "link.jsonl").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    before = src.read_bytes()
    for output in (src, "in.jsonl", "./sub/../in.jsonl", tmp_path / "link.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert run("--input", src, "--output", output) == 4
        assert "this is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before


@pytest.mark.parametrize("content", ["", "{broken\n\n"])
def test_nothing_to_rewrite_leaves_an_existing_output_untouched(tmp_path, content):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(content)
    old = json.dumps({"id": "1", "source": "s", "output": "o", "preset": "smoke",
                      "adapter": "sft+dpo"}) + "\n"
    out.write_text(old)
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=fake) == (1 if content else 0)
    assert out.read_text() == old and fake.calls == []


def test_no_output_file_is_made_when_there_is_nothing_to_write(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["{broken"])
    assert run("--input", src, "--output", tmp_path / "out.jsonl") == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unwritable_output_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr("helpers.tools.rewrite_files.load_humanizer", lambda *a: pytest.fail("model loaded"))
    under_a_file = tmp_path / "a_file" / "out.jsonl"
    assert rewrite_files.main(["--input", str(src), "--output", str(under_a_file)]) == 4
    assert "a_file/out.jsonl: cannot write there" in capsys.readouterr().err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert rewrite_files.main(["--input", str(src), "--output", str(locked / "out.jsonl")]) == 4


def test_a_missing_model_is_exit_3(tmp_path, monkeypatch, capsys):
    from helpers.core.models import ModelNotAvailable

    class Missing:
        @classmethod
        def load(cls, cfg, adapter="sft+dpo"):
            raise ModelNotAvailable("Cannot load 'some/model': no copy of it")

    monkeypatch.setattr("helpers.tools.rewrite_files.Humanizer", Missing)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    assert rewrite_files.main(["--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 3
    assert "Cannot load 'some/model'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_an_untrained_adapter_is_exit_3(tmp_path, capsys):
    fake = FakeHumanizer()
    fake.adapters = ("base",)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    out = tmp_path / "o.jsonl"
    assert run("--input", src, "--output", out, "--adapter", "sft", humanizer=fake) == 3
    assert "adapter 'sft' is not available" in capsys.readouterr().err and fake.calls == []


def test_a_crash_is_exit_5_and_keeps_the_rows_already_written(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"draft {i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    fake = FakeHumanizer(crash_on_call=3)
    assert run("--input", src, "--output", out, "--batch-size", 1, humanizer=fake) == 5
    assert [r["id"] for r in read_rows(out)] == ["0", "1"]
    err = capsys.readouterr().err
    assert "RuntimeError: model crashed" in err and "rows written so far are kept" in err


def test_resume_skips_the_ids_done_and_cuts_an_incomplete_last_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"draft {i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out, "--batch-size", 1,
               humanizer=FakeHumanizer(crash_on_call=3)) == 5
    cut_short = '{"id": "2", "source": "dra'  # a write cut short by a kill
    with open(out, "a") as f:
        f.write(cut_short)
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=fake) == 0
    assert fake.texts() == ["draft 2", "draft 3"]
    assert [r["id"] for r in read_rows(out)] == ["0", "1", "2", "3"]
    err = capsys.readouterr().err
    assert f"removed an incomplete last line ({len(cut_short)} bytes)" in err
    assert "wrote 2 rewrites" in err and "(2 were there already)" in err
    again = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=again) == 0 and again.calls == []
    assert "nothing to rewrite: 4 of 4 documents already in" in capsys.readouterr().err


@pytest.mark.parametrize("existing, message", [
    ({"id": "0", "source": "draft 0", "output": "x", "preset": "smoke", "adapter": "base"},
     "made with --preset smoke --adapter base, not smoke sft+dpo"),
    ({"id": "0", "source": "another text", "output": "x", "preset": "smoke", "adapter": "sft+dpo"},
     "the row for id '0' was made from another text than"),
    ({"name": "something else"}, "out.jsonl:1: not a humanize output row"),
])
def test_resume_refuses_an_output_it_cannot_continue(tmp_path, capsys, existing, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 0, "text": "draft 0"}, {"id": 1, "text": "b"}])
    out = write_jsonl(tmp_path / "out.jsonl", [existing])
    before = out.read_bytes()
    assert run("--input", src, "--output", out) == 4
    assert message in capsys.readouterr().err and out.read_bytes() == before


def test_input_fields_with_the_outputs_names_are_kept_under_a_prefix(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "draft", "ai": "the other draft", "source": "web", "output": 1,
         "input_source": "taken", "settings": [1, 2]}])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out) == 0
    [row] = read_rows(out)
    assert (row["source"], row["output"]) == ("draft", "DRAFT")
    assert {k: row[k] for k in ("ai", "input_source", "input_output", "input_input_source",
                                "input_settings")} == {
        "ai": "the other draft", "input_source": "web", "input_output": 1,
        "input_input_source": "taken", "input_settings": [1, 2]}


def test_resuming_with_other_settings_is_refused_unless_mixing_is_allowed(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 0, "text": "draft 0"}, {"id": 1, "text": "b"}])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out, "--batch-size", 1,
               humanizer=FakeHumanizer(crash_on_call=2)) == 5
    before = out.read_bytes()
    assert run("--input", src, "--output", out, "--fact-check", "2") == 4
    assert "the row for id '0' was made with settings" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert run("--input", src, "--output", out, "--fact-check", "2", "--allow-mixed") == 0
    settings = [r["settings"]["fact_check_samples"] for r in read_rows(out)]
    assert settings == [0, 2] and out.read_bytes().startswith(before)


SLOW_RUN = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_humanize import FakeHumanizer
from helpers.tools import rewrite_files
sys.exit(rewrite_files.main(sys.argv[1:], humanizer=FakeHumanizer(delay=0.5)))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_keeps_its_rows_and_a_rerun_finishes_the_rest(tmp_path, sig):
    src = write_jsonl(tmp_path / "in.jsonl",
                      [{"id": f"d{i}", "text": f"draft {i}"} for i in range(10)])
    out = tmp_path / "out.jsonl"
    script = SLOW_RUN.format(repo=str(REPO), tests=str(REPO / "tests"))
    proc = subprocess.Popen([sys.executable, "-c", script, "--input", str(src),
                             "--output", str(out), "--batch-size", "1", "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert code == 130 and "interrupted: rows written so far are kept" in err
    else:
        assert code == -signal.SIGKILL
    done = [line for line in out.read_text().split("\n") if line.endswith("}")]
    assert 3 <= len(done) < 10
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=fake) == 0
    assert len(fake.texts()) == 10 - len(done)
    assert [r["id"] for r in read_rows(out)] == [f"d{i}" for i in range(10)]


def test_outputs_at_the_token_cap_are_flagged_with_counts(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "long", "text": "one two three four"},
                                              {"id": "short", "text": "one"}])
    out = tmp_path / "out.jsonl"
    assert run("--input", src, "--output", out, humanizer=FakeHumanizer(cap=3)) == 0
    assert [r["hit_cap"] for r in read_rows(out)] == [True, False]
    assert ("warning: 1 of 2 pieces stopped at the generation length cap, in 1 document ('long'); "
            'those rewrites may end early ("hit_cap": true in their rows)'
            in capsys.readouterr().err)


LONG_MD = """# Report

First paragraph is here. It has two sentences.

```
code stays as it is
```

- a list item
- another

Second paragraph, which is long enough. It must be cut in two. Right here.
"""


def test_a_long_document_is_rewritten_piece_by_piece_and_reassembled(tmp_path):
    src, out = tmp_path / "report.md", tmp_path / "report.human.md"
    src.write_text(LONG_MD)
    fake = FakeHumanizer(max_input_tokens=8)
    assert run("--input", src, "--output", out, humanizer=fake) == 0
    assert fake.texts() == ["First paragraph is here. It has two sentences.",
                            "Second paragraph, which is long enough.",
                            "It must be cut in two. Right here."]
    expected = LONG_MD
    for paragraph in ("First paragraph is here. It has two sentences.",
                      "Second paragraph, which is long enough. It must be cut in two. Right here."):
        expected = expected.replace(paragraph, paragraph.upper())
    assert out.read_text() == expected
    assert run("--input", src, "--output", out) == 4  # a text output is never replaced


def test_a_title_beside_a_paragraph_of_min_piece_words_is_kept_as_it_is(tmp_path):
    paragraph = " ".join(["word"] * 29) + " end."  # 30 words: the smoke preset's min_piece_words
    src, out = tmp_path / "note.md", tmp_path / "note.human.md"
    src.write_text(f"**A title in bold**\n\n{paragraph}\n")
    fake = FakeHumanizer()
    assert run("--input", src, "--output", out, humanizer=fake) == 0
    assert fake.texts() == [paragraph]
    assert out.read_text() == f"**A title in bold**\n\n{paragraph.upper()}\n"
    everything = tmp_path / "all.human.md"
    assert run("--input", src, "--output", everything, "--min-piece-words", 0, humanizer=fake) == 0
    assert everything.read_text() == f"**A TITLE IN BOLD**\n\n{paragraph.upper()}\n"


def test_a_folder_of_documents_becomes_jsonl(tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("Bee.\n")
    (folder / "sub" / "a.txt").write_text("Ay.")
    (folder / "empty.txt").write_text("  \n")
    (folder / "skip.json").write_text("{}")
    out = tmp_path / "notes.jsonl"
    assert run("--input", folder, "--output", out) == 1
    assert [(r["id"], r["output"]) for r in read_rows(out)] == [("b.md", "BEE."),
                                                                 ("sub/a.txt", "AY.")]
    assert "empty.txt: skipped: empty document" in capsys.readouterr().err
    assert run("--input", folder, "--output", tmp_path / "notes.md") == 2


def test_stdin_and_stdout(monkeypatch, capsys):
    jsonl = b'{"id": "s", "text": "hello"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(jsonl)))
    assert run() == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["id"], row["output"]) == ("s", "HELLO")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Plain text.\n\nTwo parts.\n")))
    assert run("--input", "-", "--output", "-") == 0
    assert capsys.readouterr().out == "PLAIN TEXT.\n\nTWO PARTS.\n"


def test_command_line_help_lists_the_exit_codes():
    result = subprocess.run([sys.executable, "-m", "helpers.tools.rewrite_files", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "--adapter" in result.stdout and "sft+dpo" in result.stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130 "):
        assert f"\n  {code}" in result.stdout


@pytest.mark.slow
def test_the_real_smoke_model_rewrites_end_to_end(tmp_path):
    """The real model (smoke preset, base adapter) loads, rewrites two short drafts, writes."""
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "d1", "text": "The meeting on 3 May drew 40 people to talk budgets."},
        {"id": "d2", "text": "Rain is expected tomorrow."}])
    out = tmp_path / "out.jsonl"
    assert rewrite_files.main(["--input", str(src), "--output", str(out), "--preset", "smoke",
                          "--adapter", "base", "--no-progress"]) == 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["d1", "d2"] and all(r["output"].strip() for r in rows)
    assert all(r["adapter"] == "base" and isinstance(r["hit_cap"], bool) for r in rows)
