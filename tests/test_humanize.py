import json
import subprocess
import sys

import pytest

from helpers import humanize


def shout(drafts):
    return [d.upper() for d in drafts]


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_good_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "first draft"}\n'
                   '{"id": 7, "ai": "second draft"}\n'
                   '\n'
                   '{"text": "  third draft  "}\n')
    out = tmp_path / "out.jsonl"
    code = humanize.main(["--input", str(src), "--output", str(out), "--batch-size", "2"],
                         rewrite_fn=shout)
    assert code == 0
    assert read_rows(out) == [
        {"id": "a", "source": "first draft", "output": "FIRST DRAFT"},
        {"id": "7", "source": "second draft", "output": "SECOND DRAFT"},
        {"id": "4", "source": "third draft", "output": "THIRD DRAFT"},  # id = line number
    ]
    assert "wrote 3 rewrites" in capsys.readouterr().err


def test_empty_input(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("")
    never = lambda drafts: pytest.fail("nothing to rewrite")  # noqa: E731
    assert humanize.main(["--input", str(src), "--output", str(out)], rewrite_fn=never) == 0
    assert out.read_text() == ""


def test_malformed_lines_are_reported_by_number_and_skipped(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "ok1", "text": "keep me"}\n'
                   '{not json\n'
                   '{"id": "x", "body": "wrong field"}\n'
                   '{"id": "y", "text": "   "}\n'
                   '["a", "list"]\n'
                   '{"id": "z", "text": 42}\n'
                   '{"id": "ok2", "ai": "keep me too"}\n')
    out = tmp_path / "out.jsonl"
    assert humanize.main(["--input", str(src), "--output", str(out)], rewrite_fn=shout) == 1
    assert [r["id"] for r in read_rows(out)] == ["ok1", "ok2"]
    err = capsys.readouterr().err
    for line_no, why in [(2, "invalid JSON"), (3, "no 'text'"), (4, "empty"),
                         (5, "expected a JSON object"), (6, "not text")]:
        assert f"in.jsonl:{line_no}: skipped: " in err and why in err
    assert "skipped 5 bad lines" in err


def test_missing_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert humanize.main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(out)],
                         rewrite_fn=shout) == 2
    assert not out.exists() and "file not found" in capsys.readouterr().err


def test_a_failed_run_leaves_the_old_output_untouched(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    out.write_text("previous results\n")

    def crash(drafts):
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        humanize.main(["--input", str(src), "--output", str(out)], rewrite_fn=crash)
    assert out.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rewrite_returning_the_wrong_count_is_an_error():
    with pytest.raises(RuntimeError, match="returned 1 texts for 2 drafts"):
        humanize.humanize([{"id": "1", "text": "a"}, {"id": "2", "text": "b"}],
                          lambda drafts: ["only one"], progress=False)


def test_command_line_help():
    result = subprocess.run([sys.executable, "-m", "helpers.humanize", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--adapter" in result.stdout and "sft+dpo" in result.stdout


@pytest.mark.slow
def test_the_real_base_system_rewrites(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "d1", "text": "The meeting on 3 May drew 40 people to talk budgets."}\n')
    assert humanize.main(["--input", str(src), "--output", str(out), "--preset", "smoke",
                          "--adapter", "base"]) == 0
    [row] = read_rows(out)
    assert row["id"] == "d1" and row["source"].startswith("The meeting") and row["output"].strip()
