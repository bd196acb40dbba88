"""Trained runs compared on validation drafts: which training choice to keep.

A training choice (a data filter, another kind of DPO pair) is tried as a named experiment, e.g.

    python -m helpers.tools.series --preset workshop --experiment fact-complete \
        --set min_train_facts=1.0 --only 01      # then --only 04, --only 05 likewise

and this script rewrites the same `--n` validation drafts (one per held-out training paragraph,
never the evaluation items) with each run's humanizer, under the preset's decoding. It reports the
training judge's P(AI) (never an evaluation detector: what is chosen here must not be tuned to the
detectors that judge it), meaning similarity, facts kept and slop, and for every run after the
first the paired difference to the first run's same system, with a 95% bootstrap CI and its
reading. Beside them it reads the text: the share of rewrites that loop (a repeated 8-word
sequence), that restate a clause in other words, that stop at the token cap, that end
mid-sentence, and the facts each invents. A run may carry decoding
settings after a colon (`default:no_repeat_ngram=6`): the same adapters, decoded otherwise.
Writes runs/<preset>/experiments/compare_runs.json and .md, or NAME.json and .md with
`--name NAME` (`make readme` copies each table into docs/RESULTS.md).

    python experiments/compare_runs.py --preset workshop --runs default,fact-complete \
        --systems sft,sft+dpo --n 40
    python experiments/compare_runs.py --preset workshop --systems sft,sft+dpo --n 40 \
        --runs default,default:no_repeat_ngram=6 --name compare_decoding
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from helpers.core import fast_cpu
from helpers.core.config import get_config, parse_overrides
from helpers.core.statistics import bootstrap_ci, format_ci
from helpers.core.text_measures import (
    fact_preservation,
    invented_facts,
    load_slop_phrases,
    repeat_and_ending_flags,
    slop_per_1k,
)
from helpers.data.prepare import load_prepared, one_per_paragraph
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.experiments import save_experiment
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.tables import markdown_table
from helpers.evaluate.trained_detectors import training_judge
from helpers.evaluate.verdicts import paired_difference, reading
from helpers.infer.humanizer import Humanizer

DEFAULT_RUN = "default"  # the run without an experiment name, runs/<preset>/
MEASURES = ("P(AI)", "meaning", "facts kept", "slop/1K", "loops", "restated", "cap hits",
            "unfinished", "invented facts")
PERCENT = ("loops", "restated", "cap hits", "unfinished")


def measure_texts(texts: list[str], drafts: list[str], judge, embedder, phrases,
                  capped: list[bool] | None = None) -> dict:
    """Per-item values of every measure (NaN facts for a draft without any; NaN cap hits for
    texts that were not generated: the drafts and the human references)."""
    return {"P(AI)": [float(p) for p in judge.score(texts)],
            "meaning": [float(m) for m in meaning_similarity(embedder, texts, drafts)],
            "facts kept": [fact_preservation(d, t) for d, t in zip(drafts, texts)],
            "slop/1K": [float(s) for s in slop_per_1k(texts, phrases)],
            **repeat_and_ending_flags(texts),
            "cap hits": [float(c) for c in capped] if capped else [float("nan")] * len(texts),
            "invented facts": [float(len(invented_facts(d, t))) for d, t in zip(drafts, texts)]}


def run_list(text: str) -> list[str]:
    """'default,default:no_repeat_ngram=6,top_p=0.9,high-lr' -> ['default',
    'default:no_repeat_ngram=6,top_p=0.9', 'high-lr']: a part with '=' and no ':' continues the
    settings of the run before it (run names never hold '=')."""
    runs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and runs:
            runs[-1] += "," + part
        else:
            runs.append(part)
    return runs


def run_spec(text: str) -> tuple[str, dict]:
    """'default' or 'name:field=value,...' -> (run name, decoding overrides)."""
    name, _, setting = text.partition(":")
    try:
        return name, parse_overrides(setting)
    except ValueError as error:
        raise SystemExit(f"--runs {text!r}: {error}") from None


def summary_rows(per_item: dict, n_boot: int, seed: int) -> list[dict]:
    """per_item {(run, system): {measure: values}} -> one row per (run, system): each measure's
    mean with its CI, and for runs after the first the paired difference (this run - the first
    run) on the same system and items."""
    runs = list(dict.fromkeys(run for run, _ in per_item))
    rows = []
    for (run, system), values in per_item.items():
        row = {"run": run, "system": system,
               **{m: bootstrap_ci(values[m], n_boot, seed) for m in MEASURES}}
        first = per_item.get((runs[0], system))
        if run != runs[0] and first is not None:
            row["difference"] = {m: paired_difference(first[m], values[m], n_boot, seed)
                                 for m in MEASURES}
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    """The README table, from the saved result alone."""
    first = result["runs"][0]
    body = []
    for r in result["reference_rows"] + result["rows"]:
        cells = [r.get("run", "—"), r["system"]]
        for m in MEASURES:
            digits = 1 if m == "slop/1K" else 2
            cell = format_ci(r.get(m), digits, percent=m in PERCENT)  # "—": not measured then
            diff = r.get("difference", {}).get(m)
            if diff is not None:
                cell += (f"; − {first}: {format_ci(diff, digits, percent=m in PERCENT)}, "
                         f"{reading(m, diff)}")
            cells.append(cell)
        cells.append(str(r.get("seconds", "—")))
        body.append(cells)
    table = markdown_table(["run", "system", f"P(AI) {result['judge']} (training judge)",
                            *MEASURES[1:], "rewrite s"], body)
    caption = (f"Preset `{result['preset']}`, {result['n']} validation drafts (held-out training "
               f"paragraphs, not the evaluation items), {result['date']}, generated by "
               f"`{result['command']}`. Means with 95% bootstrap CIs; after `;` the paired "
               f"difference to run `{first}` on the same system and drafts, and its reading "
               "(lower P(AI) and slop, higher meaning and facts are better; a CI that includes 0 "
               "shows no difference).\n\n")
    return caption + table + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--runs", default=DEFAULT_RUN,
                        help=f"comma-separated experiment names ('{DEFAULT_RUN}': runs/<preset>/); "
                             "the first is the one the others are compared with")
    parser.add_argument("--systems", default="sft,sft+dpo")
    parser.add_argument("--n", type=int, default=40, help="validation drafts (one per paragraph)")
    parser.add_argument("--name", default="compare_runs",
                        help="writes experiments/NAME.json and .md (README's NAME markers)")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the .md table from the saved .json, without rewriting")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    cfg = get_config(args.preset, experiment="")
    out = cfg.path("experiments")
    if args.table_only:
        return save_experiment(out, args.name, None, markdown)

    runs = run_list(args.runs)
    splits = load_prepared(cfg)  # every run shares the default run's validation paragraphs
    items = one_per_paragraph(splits["val"], args.n, cfg.seed + 1)
    drafts, humans = [r["ai"] for r in items], [r["human"] for r in items]
    judge, embedder, phrases = training_judge(cfg, splits), Embedder(cfg.embedder), load_slop_phrases()
    boot = dict(n_boot=cfg.n_bootstrap, seed=cfg.seed)

    reference = {name: measure_texts(texts, drafts, judge, embedder, phrases)
                 for name, texts in (("source draft", drafts), ("human reference", humans))}
    per_item, seconds, examples, rewritten = {}, {}, {}, []
    for run in runs:
        name, decoding = run_spec(run)
        run_cfg = get_config(cfg.preset, experiment="" if name == DEFAULT_RUN else name)
        humanizer = Humanizer.load(run_cfg)
        for system in args.systems.split(","):
            start = time.perf_counter()
            rewrites = humanizer.rewrite_detailed(drafts, adapter=system, progress=True, **decoding)
            outputs = [r.text for r in rewrites]
            seconds[(run, system)] = round(time.perf_counter() - start)
            per_item[(run, system)] = measure_texts(outputs, drafts, judge, embedder, phrases,
                                                    [r.hit_cap for r in rewrites])
            examples[(run, system)] = outputs[0]
            rewritten.append({"run": run, "system": system, "texts": outputs})
            print(run, system, {m: round(sum(v) / len(v), 3) for m, v in
                                per_item[(run, system)].items() if m != "facts kept"})

    rows = summary_rows(per_item, **boot)
    for row in rows:
        key = (row["run"], row["system"])
        row.update(seconds=seconds[key], example=examples[key])
    reference_rows = [{"system": name, **{m: bootstrap_ci(v[m], **boot) for m in MEASURES}}
                      for name, v in reference.items()]
    result = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
              "preset": cfg.preset, "judge": judge.name, "n": len(items), "runs": runs,
              "reference_rows": reference_rows, "rows": rows,
              # every rewrite, so that the numbers can be read beside the texts behind them
              "drafts": drafts, "rewrites": rewritten}
    save_experiment(out, args.name, result, markdown)


if __name__ == "__main__":
    main()
