"""The fact switch on the evaluation drafts: the facts it keeps and what it costs, reported once.

The switch's setting is chosen on validation drafts (experiments/decoding.py --name fact_switch).
This script chooses nothing: after the series it rewrites notebook 06's evaluation drafts with one
system under that setting and sets the result against the same system's plain rewrites in
runs/<preset>/rewrites.jsonl, item by item (paired 95% bootstrap CIs): facts kept, meaning, slop,
chat artefacts and the P(AI) of every evaluation detector that separates human text from the
drafts (notebook 07's results.json), each judged against its target. Writes
runs/<preset>/experiments/fact_switch_eval.json and .md (`make readme` copies the table).

    python experiments/fact_switch_eval.py --preset workshop \
        --setting fact_check_samples=2,fact_resample=false
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np

from helpers.core import fast_cpu
from helpers.core.config import get_config, parse_overrides
from helpers.core.io import read_json
from helpers.core.statistics import bootstrap_ci, format_ci
from helpers.core.text_measures import (
    fact_preservation,
    has_chat_artefact,
    load_slop_phrases,
    slop_per_1k,
)
from helpers.data.prepare import load_prepared
from helpers.evaluate.detectors import load_detectors
from helpers.evaluate.embedding import Embedder
from helpers.evaluate.experiments import experiment_results_path, save_experiment
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.scoring import load_rewrites
from helpers.evaluate.tables import markdown_table
from helpers.evaluate.verdicts import (
    PARITY_MARGIN,
    counted_detectors,
    paired_difference,
    reading,
    verdict,
)
from helpers.infer.humanizer import Humanizer
from helpers.infer.rewrite import decoding_settings
from helpers.train.adapters import adapter_digest

NAME = "fact_switch_eval"
SWITCH_FIELDS = ("fact_check_samples", "fact_check_temperature", "fact_resample", "fact_repair")
# (measure, target, judged on: the switch's own CI or its paired difference to the human, limit,
# direction); each evaluation detector that separates adds a parity target (p_ai_target)
TARGETS = (
    ("facts kept", "≥ 0.90", "switch", 0.90, ">="),
    ("facts kept", "≥ human reference", "switch - human", 0.0, ">="),
    ("meaning", "≥ 0.85", "switch", 0.85, ">="),
    ("slop/1K", "≤ human reference", "switch - human", 0.0, "<="),
    ("chat artefacts", "≤ 1%", "switch", 0.01, "<="),
)


def p_ai_target(detector: str) -> tuple:
    return (f"P(AI) {detector}", f"≤ human reference + {PARITY_MARGIN}", "switch - human",
            PARITY_MARGIN, "<=")


def switch_setting(text: str) -> dict:
    """The fact switch's fields only: the plain rewrites it is compared with used the preset's
    decoding, so anything else changed would be measured as the switch's doing."""
    try:
        setting = parse_overrides(text)
    except ValueError as error:
        raise SystemExit(f"--setting {text!r}: {error}") from None
    other = sorted(set(setting) - set(SWITCH_FIELDS))
    if other:
        raise SystemExit(f"--setting {text!r}: only the fact switch's fields "
                         f"({', '.join(SWITCH_FIELDS)}) may change here, not {', '.join(other)}")
    if setting.get("fact_check_samples", 0) <= 0:
        raise SystemExit(f"--setting {text!r}: fact_check_samples must be above 0 (0 is off)")
    return setting


def measure(texts: list[str], drafts: list[str], detectors: dict, embedder, phrases) -> dict:
    """Per-item values of every measure (NaN facts for a draft without any)."""
    values = {f"P(AI) {name}": [float(p) for p in d.score(texts)] for name, d in detectors.items()}
    values["facts kept"] = [fact_preservation(d, t) for d, t in zip(drafts, texts)]
    values["meaning"] = [float(m) for m in meaning_similarity(embedder, texts, drafts)]
    values["slop/1K"] = [float(s) for s in slop_per_1k(texts, phrases)]
    values["chat artefacts"] = [float(has_chat_artefact(t)) for t in texts]
    return values


def summary_rows(values: dict, targets, n_boot: int, seed: int) -> list[dict]:
    """values {"plain" | "switch" | "human": {measure: per-item values}} -> one row per target:
    each side's mean with its CI, the paired differences switch − plain and switch − human, and
    the target's verdict."""
    rows = []
    for measure_name, target, judged_on, limit, direction in targets:
        plain, switch, human = (values[k][measure_name] for k in ("plain", "switch", "human"))
        row = {"measure": measure_name, "target": target,
               "plain": bootstrap_ci(plain, n_boot, seed),
               "switch": bootstrap_ci(switch, n_boot, seed),
               "switch - plain": paired_difference(plain, switch, n_boot, seed),
               "switch - human": paired_difference(human, switch, n_boot, seed)}
        row["verdict"] = verdict(row[judged_on], limit, direction)
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    """The README table, from the saved result alone."""
    def cell(stat, name, digits=2):
        if name == "chat artefacts":
            return format_ci(stat, percent=True)
        return format_ci(stat, 1 if name == "slop/1K" else digits)

    body = [[r["measure"], r["target"], cell(r["plain"], r["measure"]),
             cell(r["switch"], r["measure"]),
             f"{cell(r['switch - plain'], r['measure'], 3)}, "
             f"{reading(r['measure'], r['switch - plain'])}",
             cell(r["switch - human"], r["measure"], 3),
             "**not met**" if r["verdict"] == "not met" else r["verdict"]]
            for r in result["rows"]]
    body.append(["empty outputs", "none", str(result["empty"]["plain"]),
                 str(result["empty"]["switch"]), "—", "—",
                 "met" if result["empty"]["switch"] == 0 else "**not met**"])
    table = markdown_table(["measure", "target", f"{result['system']} plain",
                            "fact switch on", "switch − plain", "switch − human", "verdict"], body)
    caption = (f"Preset `{result['preset']}`, the {result['n']} evaluation drafts of notebook 06, "
               f"{result['date']}, generated by `{result['command']}` (the setting was chosen on "
               f"validation drafts, above; rewriting took {result['seconds']} s). Means with 95% "
               "bootstrap CIs; differences are paired, item by item, with the plain rewrites of "
               "`rewrites.jsonl` and with the human references; verdicts as in the targets table "
               "(P(AI) only for evaluation detectors that separate human text from the drafts).\n\n")
    return caption + table + "\n"


def check_plain_rewrites(cfg, humanizer, system: str) -> list[dict]:
    """notebook 06's rows, if they were made by these adapters with the preset's decoding."""
    path = cfg.path("rewrites.jsonl")
    rows = load_rewrites(path)
    key = read_json(path.with_name(path.name + ".key.json"))
    if key["adapters"] != adapter_digest(humanizer.model):
        raise SystemExit(f"{path} was written by other adapters: run notebook 06 again")
    if key["decoding"] != decoding_settings(cfg):
        raise SystemExit(f"{path} was decoded with other settings than the preset's: run "
                         "notebook 06 again without overrides")
    if system not in rows[0]["outputs"]:
        raise SystemExit(f"{path} has no {system!r} rewrites: {', '.join(rows[0]['outputs'])}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--system", default="sft+dpo")
    parser.add_argument("--setting", default="fact_check_samples=2,fact_resample=false",
                        help="the fact switch's fields, e.g. fact_check_samples=2")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the .md table from the saved .json, without rewriting")
    args = parser.parse_args()
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    cfg = get_config(args.preset, experiment="")
    out = cfg.path("experiments")
    if args.table_only:
        return save_experiment(out, NAME, None, markdown)

    setting = switch_setting(args.setting)
    humanizer = Humanizer.load(cfg)
    rows = check_plain_rewrites(cfg, humanizer, args.system)
    drafts, humans = [r["source"] for r in rows], [r["human"] for r in rows]
    plain = [r["outputs"][args.system] for r in rows]
    embedder = Embedder(cfg.embedder)
    detectors, _ = load_detectors(cfg, embedder, load_prepared(cfg))
    counted = counted_detectors(read_json(experiment_results_path(cfg.preset, "")))
    detectors = {name: detectors[name] for name in counted if name in detectors}

    start = time.perf_counter()
    switched = humanizer.rewrite(drafts, adapter=args.system, progress=True, **setting)
    seconds = round(time.perf_counter() - start)
    phrases = load_slop_phrases()
    values = {side: measure(texts, drafts, detectors, embedder, phrases)
              for side, texts in (("plain", plain), ("switch", switched), ("human", humans))}
    targets = TARGETS + tuple(p_ai_target(name) for name in detectors)
    changed = [i for i, (a, b) in enumerate(zip(plain, switched)) if a != b]
    result = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
              "preset": cfg.preset, "n": len(rows), "system": args.system,
              "setting": setting, "seconds": seconds, "changed": len(changed),
              "rows": summary_rows(values, targets, cfg.n_bootstrap, cfg.seed),
              "empty": {"plain": sum(not t.strip() for t in plain),
                        "switch": sum(not t.strip() for t in switched)},
              "examples": [{"draft": drafts[i], "plain": plain[i], "switch": switched[i]}
                           for i in changed[:2]]}
    print(f"{len(changed)} of {len(rows)} rewrites changed by the switch; mean facts kept "
          f"{np.nanmean(values['plain']['facts kept']):.3f} -> "
          f"{np.nanmean(values['switch']['facts kept']):.3f}")
    save_experiment(out, NAME, result, markdown)


if __name__ == "__main__":
    main()
