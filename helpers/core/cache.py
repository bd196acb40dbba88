"""The one cache mechanism of the project: results keyed on their content, written atomically,
stored as JSON (and safetensors for arrays), never pickle.

A key is `content_key(kind, version, **parts)`: a digest of everything that determines the
result (the config fields that matter, digests of the input ids or texts, digests of files). The
key is compared, never a file's age or name: change a setting and the old entry is simply not
found, so nothing is ever served stale, and an unchanged rerun reads the result back. Each cache
user declares its own VERSION and passes it here: bumping it when the code that computes the
values changes makes every old entry a miss, with no need to name the change in `parts`.

A JSON cache file holds {"format": FORMAT, "entries": {key: value}}: one entry (`keep=False`,
the file is a result with its key beside it) or many (a scan that writes each result as it comes
and resumes where it stopped). A safetensors file holds one entry, its key in the metadata.
A file that is missing, unreadable, truncated or in another format (an older cache) is a miss,
never an error: the result is computed again and the file rewritten, so no migration is needed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from helpers.core.io import atomic_write_bytes, atomic_write_json

FORMAT = "helpers.core.cache/1"


def digest(value) -> str:
    """A stable hex digest of a JSON-able value (dict order does not matter; tuples are lists)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def bytes_digest(data: bytes | Iterable[bytes]) -> str:
    """A digest of raw bytes, or of the concatenation of chunks (hashed as they come, so that a
    model's weights or a large file need not be in memory twice)."""
    sha = hashlib.sha1()
    for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        sha.update(chunk)
    return sha.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """A digest of a file's contents, read in chunks; "none" when there is no such file."""
    path = Path(path)
    if not path.exists():
        return "none"
    with open(path, "rb") as f:
        return bytes_digest(iter(lambda: f.read(1 << 22), b""))


def content_key(kind: str, version: int, /, **parts) -> str:
    """The key of a result of `kind` computed by code at `version` from `parts` (JSON-able)."""
    return f"{kind}-v{version}-{digest(parts)}"


def read_entries(path: str | Path) -> dict:
    """{key: value} of a JSON cache file; {} when it is missing, damaged or not one of ours."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # missing, unreadable, truncated: a miss
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def load_json(path: str | Path, key: str):
    """The value stored under `key` in a JSON cache file, or None (a miss)."""
    return read_entries(path).get(key)


def save_json(path: str | Path, key: str, value, keep: bool = True) -> Path:
    """Store `value` under `key`, atomically. keep=False drops the file's other entries (a cache of
    one current result); keep=True keeps them (entries of other settings stay available)."""
    entries = read_entries(path) if keep else {}
    entries[key] = value
    return atomic_write_json(path, {"format": FORMAT, "entries": entries})


def load_arrays(path: str | Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of a safetensors cache file written under `key`, or None (a miss)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("cache_key") != key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception:  # noqa: BLE001 - missing or damaged: safetensors raises several types
        return None


def save_arrays(path: str | Path, key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` (numpy) to a safetensors file with `key` in its metadata, atomically."""
    return atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                         metadata={"cache_key": key, "format": FORMAT}))
