"""The lengths users bring: drafts of 200-500 words, rewritten through the command line's own path
(`python -m helpers.tools.rewrite_files`: cut into pieces at paragraph and sentence boundaries, each piece
rewritten, the pieces joined), and read with the measures of notebook 07.

The workshop preset trains and evaluates on paragraphs of at most 160 words, which hides what
happens on longer texts. Here 50 documents: half from the training file's paragraphs that no
training step ever saw (their human text is longer than the preset's word limit, so every pair
of theirs was dropped before training: "validation"), half from the dev file ("evaluation"),
one draft per paragraph. Each system's rows go to runs/<preset>/experiments/long_<system>.jsonl
(humanize's own output, resumable); the summary to long_documents.json and .md.

    python experiments/long_documents.py --preset workshop --systems sft,sft+dpo --n 50
    python experiments/long_documents.py --preset workshop --setting no_repeat_ngram=6 --name long_documents_ngram6
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys

import numpy as np

from helpers.core import fast_cpu
from helpers.core.config import get_config, parse_overrides
from helpers.core.io import atomic_write_jsonl, iter_jsonl
from helpers.core.statistics import bootstrap_ci, format_ci
from helpers.core.text_measures import (
    fact_preservation,
    invented_facts,
    length_ratio,
    repeat_and_ending_flags,
    word_count,
)
from helpers.data.prepare import one_per_paragraph
from helpers.data.sources import load_split
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.experiments import save_experiment
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.tables import markdown_table
from helpers.infer.chunking import split_document
from helpers.infer.humanizer import Humanizer
from helpers.tools import rewrite_files

MIN_WORDS, MAX_WORDS = 200, 500


def long_documents(cfg, n: int) -> list[dict]:
    """n/2 long drafts from the training file whose paragraphs no training step saw (the human
    text is longer than cfg.max_words, so clean() dropped every pair of that paragraph) and n/2
    from the dev file; one per paragraph, chosen with cfg.seed."""
    chosen = []
    for split, subset in (("train", "validation"), ("dev", "evaluation")):
        rows, _ = load_split(cfg, split)
        long = [r for r in rows if MIN_WORDS <= word_count(r["ai"]) <= MAX_WORDS
                and word_count(r["human"]) > cfg.max_words and not r["low_overlap"]]
        chosen += [{**r, "subset": subset} for r in one_per_paragraph(long, n // 2, cfg.seed + 2)]
    return chosen


def rewrite_through_cli(humanizer, docs: list[dict], out, adapter: str) -> list[dict]:
    """Each document through helpers.tools.rewrite_files, as a user's JSONL file; rows in input order."""
    source = out.with_name(out.stem + "_input.jsonl")
    atomic_write_jsonl(source, [{"id": d["id"], "text": d["ai"]} for d in docs])
    code = rewrite_files.main(["--input", str(source), "--output", str(out), "--adapter", adapter,
                          "--preset", humanizer.cfg.preset, "--no-progress", "--overwrite"],
                         humanizer=humanizer)
    if code != 0:
        raise SystemExit(f"helpers.tools.rewrite_files exited with {code} on {source}")
    by_id = {row["id"]: row for _, row in iter_jsonl(out, strict=True)}
    return [by_id[d["id"]] for d in docs]


def kept_words(count_tokens, max_tokens: int, draft: str, min_piece_words: int) -> float:
    """The share of the draft's words that the command line passes through unchanged: markdown
    structure, and short prose pieces beside longer ones (helpers/infer/chunking.py)."""
    pieces = split_document(draft, count_tokens, max_tokens, min_piece_words)
    return sum(word_count(p.text) for p in pieces if not p.rewrite) / max(1, word_count(draft))


def measures(texts: list[str], drafts: list[str], embedder, capped=None, boot=None,
             kept=None) -> dict:
    """Loops, restated clauses, cap hits, endings cut mid-sentence, invented facts, facts kept,
    meaning, length and the words kept as they were, each with its 95% CI."""
    row = {**repeat_and_ending_flags(texts),
           "invented facts": [float(len(invented_facts(d, t))) for d, t in zip(drafts, texts)],
           "facts kept": [fact_preservation(d, t) for d, t in zip(drafts, texts)],
           "meaning": [float(m) for m in meaning_similarity(embedder, texts, drafts)],
           "length ratio": [length_ratio(t, d) for d, t in zip(drafts, texts)]}
    if capped is not None:
        row["cap hits"] = [float(c) for c in capped]
    if kept is not None:
        row["kept words"] = kept
    return {k: bootstrap_ci(np.asarray(v, dtype=float), **boot) for k, v in row.items()}


COLUMNS = ("loops", "restated", "cap hits", "unfinished", "invented facts", "facts kept", "meaning",
           "length ratio", "kept words")
PERCENT = ("loops", "restated", "cap hits", "unfinished", "kept words")
DRAFT_MEASURES = ("loops", "restated", "unfinished")  # a draft's own text: nothing to compare


def markdown(result: dict) -> str:
    body = [[r["subset"], r["system"]] + [format_ci(r[c], percent=c in PERCENT) if c in r else "—"
                                          for c in COLUMNS] for r in result["rows"]]
    caption = (f"Preset `{result['preset']}`{result['setting']}, {result['n']} drafts of "
               f"{MIN_WORDS}-{MAX_WORDS} words (mean {result['mean_words']:.0f}) rewritten through "
               f"`python -m helpers.tools.rewrite_files`, {result['date']}, generated by `{result['command']}`. "
               "Means with 95% bootstrap CIs. Loops: share of texts repeating an 8-word sequence; "
               "restated: share with two clauses that say the same in other words; cap hits: share "
               "of documents with a piece that stopped at the token cap; unfinished: share ending "
               "mid-sentence (no . ! ? or … at the end); invented "
               "facts: numbers, dates, names and citations per text that the draft does not have; "
               "kept words: share of the draft's words passed through unchanged (markdown "
               "structure, and prose pieces under min_piece_words words beside longer ones).\n\n")
    return caption + markdown_table(["drafts", "system"] + list(COLUMNS), body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--systems", default="sft,sft+dpo")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--setting", default="", help="decoding overrides, e.g. no_repeat_ngram=6")
    parser.add_argument("--name", default="long_documents")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    cfg = get_config(args.preset, **parse_overrides(args.setting))
    out = cfg.path("experiments")
    if args.table_only:
        return save_experiment(out, args.name, None, markdown)
    docs = long_documents(cfg, args.n)
    embedder, boot = Embedder(cfg.embedder), dict(n_boot=cfg.n_bootstrap, seed=cfg.seed)
    humanizer = Humanizer.load(cfg)
    outputs = {"source draft": None, "human reference": None}
    kept = [kept_words(humanizer.count_tokens, humanizer.max_input_tokens, d["ai"],
                       cfg.min_piece_words) for d in docs]
    for system in args.systems.split(","):
        rows = rewrite_through_cli(humanizer, docs, out / f"{args.name}_{system}.jsonl", system)
        outputs[system] = rows
    result_rows = []
    for subset in ("validation", "evaluation", "all"):
        part = [i for i, d in enumerate(docs) if subset in ("all", d["subset"])]
        drafts = [docs[i]["ai"] for i in part]
        for system, rows in outputs.items():
            if rows is None:
                texts = drafts if system == "source draft" else [docs[i]["human"] for i in part]
                row = measures(texts, drafts, embedder, boot=boot)
            else:
                row = measures([rows[i]["output"] for i in part], drafts, embedder,
                               [rows[i]["hit_cap"] for i in part], boot, [kept[i] for i in part])
            if system == "source draft":
                row = {k: v for k, v in row.items() if k in DRAFT_MEASURES}
            result_rows.append({"subset": subset, "system": system, **row})
    result = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
              "preset": cfg.preset, "n": len(docs),
              "setting": f", decoding {args.setting}" if args.setting else "",
              "mean_words": float(np.mean([word_count(d["ai"]) for d in docs])),
              "rows": result_rows,
              "examples": {s: rows[0]["output"] for s, rows in outputs.items() if rows}}
    save_experiment(out, args.name, result, markdown)


if __name__ == "__main__":
    main()
