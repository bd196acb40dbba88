"""Decoding settings compared on validation drafts (never the evaluation items).

Rewrites `--n` validation drafts (one per held-out training paragraph) with the trained systems
under each setting and reports the training judge's P(AI) (never an evaluation detector: what is
chosen here must not be tuned to the detectors that judge it), meaning similarity, facts kept and
slop, means with 95% bootstrap CIs. Writes runs/<preset>/experiments/decoding.json
and decoding.md (`make readme` copies the table into README; `--name fact_switch` writes
fact_switch.json/.md instead, README's fact-switch table).

    python experiments/decoding.py --preset workshop --n 40 --systems base,sft,sft+dpo \
        --setting temperature=0.7,repetition_penalty=1.0 \
        --setting temperature=0.0,repetition_penalty=1.2
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from helpers.config import get_config, parse_overrides
from helpers.data import load_prepared, load_slop_phrases, one_per_paragraph
from helpers.detectors import Embedder, training_judge
from helpers.humanizer import Humanizer
from helpers.io import atomic_write_json, atomic_write_text
from helpers.metrics import bootstrap_ci, fact_preservation, meaning_similarity, slop_per_1k
from helpers.results import format_ci, markdown_table


def parse_setting(text: str) -> dict:
    """'temperature=0.3,repetition_penalty=1.15' -> {'temperature': 0.3, ...} (Config fields only)."""
    try:
        return parse_overrides(text)
    except ValueError as error:
        raise SystemExit(f"--setting {text!r}: {error}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--experiment", default=None, help="read/write runs/<preset>/NAME/")
    parser.add_argument("--n", type=int, default=40, help="validation drafts (one per paragraph)")
    parser.add_argument("--systems", default="base,sft,sft+dpo")
    parser.add_argument("--setting", action="append", required=True,
                        help="comma-separated Config overrides, e.g. temperature=0.3")
    parser.add_argument("--name", default="decoding", choices=("decoding", "fact_switch"),
                        help="the table it writes (README has a section for each)")
    args = parser.parse_args()

    cfg = get_config(args.preset, experiment=args.experiment)
    splits = load_prepared(cfg)
    items = one_per_paragraph(splits["val"], args.n, cfg.seed + 1)
    drafts, humans = [r["ai"] for r in items], [r["human"] for r in items]
    embedder = Embedder(cfg.embedder)
    judge = training_judge(cfg, splits)
    phrases = load_slop_phrases()
    humanizer = Humanizer.load(cfg)
    boot = dict(n_boot=cfg.n_bootstrap, seed=cfg.seed)

    def measure(texts: list[str]) -> dict:
        row = {f"P(AI) {judge.name}": bootstrap_ci(judge.score(texts), **boot)}
        row["meaning"] = bootstrap_ci(meaning_similarity(embedder, texts, drafts), **boot)
        row["facts"] = bootstrap_ci([fact_preservation(s, o) for s, o in zip(drafts, texts)], **boot)
        row["slop/1K"] = bootstrap_ci(slop_per_1k(texts, phrases), **boot)
        return row

    rows = [{"system": "source draft", "setting": "", **measure(drafts)},
            {"system": "human reference", "setting": "", **measure(humans)}]
    for text in args.setting:
        setting = parse_setting(text)
        for which in args.systems.split(","):
            start = time.perf_counter()
            outputs = humanizer.rewrite(drafts, adapter=which, progress=True, **setting)
            rows.append({"system": which, "setting": text, **measure(outputs),
                         "seconds": round(time.perf_counter() - start), "example": outputs[0]})
            print(rows[-1]["system"], text, {k: round(v["mean"], 3) for k, v in rows[-1].items()
                                             if isinstance(v, dict) and v["mean"] is not None})

    out = cfg.path("experiments")
    out.mkdir(exist_ok=True)
    command = "python " + " ".join(sys.argv)
    atomic_write_json(out / f"{args.name}.json", {"command": command, "n": len(items), "rows": rows})
    metrics = [k for k in rows[0] if k not in ("system", "setting")]
    table = markdown_table(["system", "decoding"] + metrics + ["rewrite s"],
                           [[r["system"], r["setting"].replace(",", ", ") or "—"]
                            + [format_ci(r[k], 1 if k == "slop/1K" else 2) for k in metrics]
                            + [str(r.get("seconds", "—"))] for r in rows])
    caption = (f"Preset `{cfg.preset}`, {len(items)} validation drafts (held-out training "
               f"paragraphs, not the evaluation items), {dt.date.today().isoformat()}, generated "
               f"by `{command}`. Means with 95% bootstrap CIs.\n\n")
    atomic_write_text(out / f"{args.name}.md", caption + table + "\n")
    print(caption + table)


if __name__ == "__main__":
    main()
