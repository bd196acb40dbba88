import gzip
import io
import json
import os
import stat

import pytest

from helpers.core.io import (
    DataError,
    ReadReport,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    iter_jsonl,
    read_text_file,
)


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_permissions_not_mkstemps_0600(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    written = atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "b.json", {})
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]  # no temp files left


def rows(source, **kwargs):
    return [obj for _, obj in iter_jsonl(source, **kwargs)]


def test_gzip_is_recognised_by_content_not_by_name(tmp_path):
    lines = b'{"id": 1}\n{"id": 2}\n'
    disguised = tmp_path / "drafts.jsonl"
    disguised.write_bytes(gzip.compress(lines))
    plain_named_gz = tmp_path / "plain.jsonl.gz"
    plain_named_gz.write_bytes(lines)
    assert rows(disguised, strict=True) == [{"id": 1}, {"id": 2}]
    assert rows(plain_named_gz, strict=True) == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize("strict", [True, False])
def test_a_truncated_gzip_is_an_error_naming_the_file(tmp_path, strict):
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b"".join(b'{"id": %d, "text": "draft number %d"}\n' % (i, i)
                                  for i in range(200)))
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: truncated or corrupt gzip data after"):
        rows(path, report=ReadReport(str(path)), strict=strict)


def test_a_byte_order_mark_on_the_first_line_is_not_a_bad_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n')
    report = ReadReport(str(path))
    assert rows(path, report=report) == [{"id": 1}, {"id": 2}]
    assert report.skipped == []


def test_bad_lines_are_reported_by_number(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"id": 1}\n\xff\xfe\n\n[1]\n{oops\n{"id": 6}\n')
    report = ReadReport(str(path))
    assert [n for n, _ in iter_jsonl(path, report)] == [1, 6]
    assert [n for n, _ in report.skipped] == [2, 4, 5]
    assert "not valid UTF-8" in report.skipped[0][1]
    assert report.skipped[1][1] == "expected a JSON object, got list"
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: not valid UTF-8"):
        rows(path, strict=True)


def test_streams_are_read_too_gzip_included():
    data = gzip.compress(json.dumps({"id": "s"}).encode() + b"\n")
    assert rows(io.BytesIO(data), strict=True, name="<stdin>") == [{"id": "s"}]


def test_missing_file_and_folder_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        rows(tmp_path)


def test_read_text_file(tmp_path):
    path = tmp_path / "doc.md"
    path.write_bytes(b"\xef\xbb\xbf# Title\n\nBody.\n")
    assert read_text_file(path) == "# Title\n\nBody.\n"
    path.write_bytes(gzip.compress("Déjà vu.\n".encode()))
    assert read_text_file(path) == "Déjà vu.\n"
    path.write_bytes(b"line one\nline two \xff\n")
    with pytest.raises(DataError, match=r"doc\.md:2: not valid UTF-8 .* at byte 18"):
        read_text_file(path)
