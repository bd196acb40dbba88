"""Small file helpers: atomic writes (a crash never leaves half a file) and careful JSONL reading.

Files written here get the permissions any other program would give them (0666 less the umask);
gzip is recognised by its first two bytes, whatever the file is called.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """Bad input, with the file and line it came from."""


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` to write; renamed onto `path` when the block ends without
    an error, removed when it fails. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); the result should be like any other file
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class ReadReport:
    """What a tolerant reader kept and what it skipped (with line numbers)."""
    path: str
    kept: int = 0
    skipped: list = field(default_factory=list)  # (line number, reason)

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped.append((line_no, reason))

    def summary(self) -> str:
        head = f"{self.path}: kept {self.kept} rows, skipped {len(self.skipped)}"
        shown = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:5])
        more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
        return head + (f" — {shown}{more}" if shown else "")


def open_binary(source: str | Path | BinaryIO, name: str | None = None) -> BinaryIO:
    """A binary reader of `source` (a path or a binary file), decompressed if it is gzip data."""
    f = open(source, "rb") if isinstance(source, (str, Path)) else source
    if not f.seekable():  # stdin: buffer it so that the magic bytes can be looked at
        f = io.BytesIO(f.read())
    magic = f.read(2)
    f.seek(-len(magic), io.SEEK_CUR)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb", filename=str(name or source))
    return f


def _source_name(source, name: str | None) -> str:
    if name:
        return name
    return str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<stream>")


def _lines(f: BinaryIO, name: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line); a damaged gzip stream is a DataError naming the file."""
    line_no = 0
    try:
        for line_no, raw in enumerate(f, start=1):
            yield line_no, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{name}: truncated or corrupt gzip data after line {line_no} "
                        f"({type(err).__name__}: {err})") from None


def _missing(source) -> bool:
    return isinstance(source, (str, Path)) and not Path(source).exists()


def iter_jsonl(source: str | Path | BinaryIO, report: ReadReport | None = None,
               strict: bool = False, name: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line of a file (plain or gzip, by content) or a
    binary stream. Blank lines are ignored, a UTF-8 byte order mark on the first line too. A line
    that is not UTF-8, not JSON, or not an object raises DataError (strict) or is recorded in
    `report`; a file that is missing or a truncated gzip always raises DataError."""
    name = _source_name(source, name)
    if _missing(source):
        raise DataError(f"{name}: file not found")
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        raise DataError(f"{name}: is a folder, not a JSONL file")
    with open_binary(source, name) as f:
        for line_no, raw in _lines(f, name):
            problem = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            else:
                if line_no == 1:
                    text = text.removeprefix("\ufeff")
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as err:
                    problem = f"invalid JSON ({err.msg}, column {err.colno})"
                else:
                    if not isinstance(obj, dict):
                        problem = f"expected a JSON object, got {type(obj).__name__}"
            if problem:
                if strict:
                    raise DataError(f"{name}:{line_no}: {problem}")
                if report is not None:
                    report.skip(line_no, problem)
                continue
            yield line_no, obj


def read_text_file(source: str | Path | BinaryIO, name: str | None = None) -> str:
    """A whole UTF-8 text file (plain or gzip, by content; a byte order mark is dropped).
    Undecodable bytes are a DataError naming the file, line and byte."""
    name = _source_name(source, name)
    if _missing(source):
        raise DataError(f"{name}: file not found")
    with open_binary(source, name) as f:
        data = b"".join(raw for _, raw in _lines(f, name))
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{name}:{line_no}: not valid UTF-8 ({err.reason} at byte {err.start})") \
            from None


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (model files do not fit twice in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
