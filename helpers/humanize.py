"""Rewrite a JSONL file of AI drafts with one of the tutorial's systems.

    python -m helpers.humanize --input drafts.jsonl --output rewrites.jsonl \
        [--preset workshop] [--adapter sft+dpo]

Input: one JSON object per line with the draft in "text" (or "ai") and an optional "id" (default:
the line number). Output: {"id", "source", "output"} per draft, written atomically once all are
done, so any tool (notebook 07's detectors included) can score it. Bad lines are reported by line
number and skipped; the exit status is then 1 (0 when every line was used, 2 when nothing could
be read).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .io import DataError, ReadReport, atomic_write_jsonl, iter_jsonl

TEXT_FIELDS = ("text", "ai")
ADAPTERS = ("base", "sft", "dpo-only", "sft+dpo")


def read_drafts(path) -> tuple[list[dict], ReadReport]:
    """[{"id", "text"}] from a JSONL file, and the lines skipped with the reason for each."""
    report = ReadReport(str(path))
    drafts = []
    for line_no, obj in iter_jsonl(path, report):
        field = next((f for f in TEXT_FIELDS if f in obj), None)
        text = obj.get(field) if field else None
        if field is None:
            report.skip(line_no, "no 'text' (or 'ai') field")
        elif not isinstance(text, str) or not text.strip():
            report.skip(line_no, f"field {field!r} is empty or not text")
        else:
            drafts.append({"id": str(obj.get("id", line_no)), "text": text.strip()})
    report.kept = len(drafts)
    return drafts, report


def humanize(drafts: list[dict], rewrite_fn: Callable[[list[str]], list[str]],
             batch_size: int = 32, progress: bool = True) -> list[dict]:
    """Rewrite in batches (one progress step per batch); rows keep their ids and sources."""
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=len(drafts), disable=not progress, desc="humanizing", file=sys.stderr) as bar:
        for start in range(0, len(drafts), batch_size):
            batch = drafts[start:start + batch_size]
            outputs = rewrite_fn([d["text"] for d in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"rewrite returned {len(outputs)} texts for {len(batch)} drafts")
            rows += [{"id": d["id"], "source": d["text"], "output": o}
                     for d, o in zip(batch, outputs)]
            bar.update(len(batch))
    return rows


def system_rewriter(cfg, adapter: str) -> Callable[[list[str]], list[str]]:
    """The model of notebooks 04-06 with the chosen adapters, as drafts -> rewrites."""
    from .generate import load_system, rewrite

    model, tokenizer = load_system(cfg, adapter)
    return lambda drafts: rewrite(model, tokenizer, drafts, cfg, progress=False)


def main(argv: list[str] | None = None, rewrite_fn=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.humanize",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help='JSONL with {"id", "text"} (or "ai") lines')
    parser.add_argument("--output", required=True, help='JSONL to write {"id", "source", "output"}')
    parser.add_argument("--preset", default=None, help="config preset (default: $HUMANIZER_PRESET "
                                                       "or workshop)")
    parser.add_argument("--adapter", default="sft+dpo", choices=ADAPTERS)
    parser.add_argument("--batch-size", type=int, default=32, help="drafts per progress step")
    args = parser.parse_args(argv)

    try:
        drafts, report = read_drafts(args.input)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line_no, why in report.skipped:
        print(f"{args.input}:{line_no}: skipped: {why}", file=sys.stderr)
    if drafts and rewrite_fn is None:
        from .config import get_config
        rewrite_fn = system_rewriter(get_config(args.preset), args.adapter)
    rows = humanize(drafts, rewrite_fn, args.batch_size) if drafts else []
    atomic_write_jsonl(args.output, rows)
    print(f"wrote {len(rows)} rewrites to {args.output}"
          + (f"; skipped {len(report.skipped)} bad lines" if report.skipped else ""),
          file=sys.stderr)
    return 1 if report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
