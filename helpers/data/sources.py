"""Where the paired data comes from: the L2R files shipped in data/l2r/ (CC BY 3.0, data/README.md),
EditLens from the hub, or a JSONL file of the user's, each read with a report of the rows it skipped
and why."""
from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import snapshot_download

from helpers.core.io import DataError, ReadReport, iter_jsonl
from helpers.core.models import assets_dir
from helpers.core.text_measures import REPO_DATA

REQUIRED_FIELDS = ("human", "ai")


L2R_FILES = {"train": "l2r/l2r_train.jsonl.gz", "dev": "l2r/l2r_dev.jsonl.gz"}


EDITLENS_ID = "pangram/editlens_iclr"


def read_pairs(path: str | Path, strict: bool = False) -> tuple[list[dict], ReadReport]:
    """Rows with non-empty `human` and `ai` strings from a JSONL(.gz) file, exact duplicates
    removed. Bad lines raise DataError (strict) or are skipped and listed in the report."""
    report = ReadReport(str(path))
    rows, seen = [], set()
    for line_no, obj in iter_jsonl(path, report, strict=strict):
        problem = None
        for name in REQUIRED_FIELDS:
            value = obj.get(name)
            if value is None:
                problem = f"missing field {name!r}"
            elif not isinstance(value, str):
                problem = f"field {name!r} is {type(value).__name__}, expected text"
            elif not value.strip():
                problem = f"field {name!r} is empty"
            if problem:
                break
        if problem is None:
            key = (paragraph_key(obj["human"]), paragraph_key(obj["ai"]))
            if key in seen:
                problem = "duplicate of an earlier (human, ai) pair"
            seen.add(key)
        if problem:
            if strict and not problem.startswith("duplicate"):
                raise DataError(f"{path}:{line_no}: {problem}")
            report.skip(line_no, problem)
            continue
        rows.append({
            "id": str(obj.get("id", f"{Path(path).name}:{line_no}")),
            "domain": obj.get("domain", "unknown"),
            "human": obj["human"].strip(),
            "ai": obj["ai"].strip(),
            "ai_model": obj.get("ai_model", "unknown"),
            "low_overlap": bool(obj.get("low_overlap", False)),
            "group": paragraph_key(obj["human"]),
        })
    report.kept = len(rows)
    return rows, report


def editlens_source() -> str:
    """Where load_dataset finds EditLens: the Hugging Face cache's copy when there is one (offline,
    `load_dataset(EDITLENS_ID)` only finds data it has prepared itself, not a downloaded
    snapshot), else the hub id."""
    try:
        return snapshot_download(EDITLENS_ID, repo_type="dataset", local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        return EDITLENS_ID


def load_editlens(split: str) -> list[dict]:
    """The EditLens corpus (training split for 'train', test split for 'dev'): each row pairs a
    human text (`source_text`) with an AI text made from it (`text`, AI-generated or AI-edited).
    Its human-written rows (text = source text) pair a text with itself and are left out."""
    # deferred: datasets is slow to import, and only this path needs it
    from datasets import load_dataset

    try:
        ds = load_dataset(editlens_source(), split="train" if split == "train" else "test")
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataError(f"Cannot load {EDITLENS_ID!r} ({why}). Download it once on a connected "
                        f"machine (`hf download {EDITLENS_ID} --repo-type dataset`), or use "
                        "data_source='l2r' (the repository's data/l2r/)") from err
    columns = set(ds.column_names)
    human_col = next((c for c in ("human", "source_text", "original_text") if c in columns), None)
    ai_col = next((c for c in ("ai", "text", "edited_text") if c in columns), None)
    if not human_col or not ai_col:
        raise DataError(f"{EDITLENS_ID}: expected human/ai text columns, found {sorted(columns)}")
    rows = []
    for i, r in enumerate(ds):
        human, ai = r[human_col], r[ai_col]
        if not (isinstance(human, str) and isinstance(ai, str) and human.strip() and ai.strip()) \
                or r.get("text_type") == "human_written" or paragraph_key(human) == paragraph_key(ai):
            continue
        rows.append({"id": str(r.get("id", r.get("text_id", i))),
                     "domain": r.get("domain", r.get("source", "unknown")),
                     "human": human.strip(), "ai": ai.strip(),
                     "ai_model": r.get("model", "unknown"), "low_overlap": False,
                     "group": paragraph_key(human)})
    return rows


def l2r_file(split: str) -> Path:
    """The L2R file of `split`: the repository's own copy (data/l2r/, see data/README.md), else the
    one in HUMANIZER_ASSETS (an offline pack made by `make assets`)."""
    candidates = [REPO_DATA / L2R_FILES[split]]
    if (root := assets_dir()) is not None:
        candidates.append(root / "data" / L2R_FILES[split])
    for path in candidates:
        if path.exists():
            return path
    raise DataError(f"{candidates[0]} is missing: it comes with the repository (git checkout -- "
                    f"data/l2r), or set data_source to your own JSONL files")


def load_split(cfg, split: str) -> tuple[list[dict], ReadReport | None]:
    """All rows of 'train' or 'dev' for the configured data source (before cleaning)."""
    if split not in L2R_FILES:
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    source = cfg.data_source
    if source == "editlens":
        return load_editlens(split), None
    if source == "l2r":
        return read_pairs(l2r_file(split))
    path = Path(source.format(split=split))
    return read_pairs(path)


def paragraph_key(text: str) -> str:
    """Same paragraph, same key, whatever the white space."""
    normalized = " ".join(text.split()).lower()
    return hashlib.sha1(normalized.encode("utf-8")).hexdigest()[:16]
