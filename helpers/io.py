"""Small file helpers: atomic writes (a crash never leaves half a file) and careful JSONL reading."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator


class DataError(ValueError):
    """Bad input, with the file and line it came from."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_jsonl(path: str | Path, report: ReadReport | None = None,
               strict: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line. Blank lines are ignored. A line that is not
    UTF-8, not JSON, or not an object raises DataError (strict) or is recorded in `report`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            problem = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            else:
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
                    raise DataError(f"{path}:{line_no}: {problem}")
                if report is not None:
                    report.skip(line_no, problem)
                continue
            yield line_no, obj
