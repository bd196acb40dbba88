"""Tables generated from results.json: markdown and data frames.
"""
from __future__ import annotations

from helpers.core.statistics import format_ci
from helpers.core.text_measures import LOOP_N, RESTATE_MIN_WORDS, RESTATE_OVERLAP
from helpers.evaluate.verdicts import (
    NOT_COUNTED,
    VERDICT_RULE,
    counted_detectors,
    reading,
    separates,
    target_rows,
)
from helpers.infer.systems import SYSTEMS as SYSTEM_NAMES


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def column_name(results: dict, detector: str) -> str:
    kind = results["detectors"][detector]["kind"]
    return detector if kind == "evaluation" else f"{detector} ({kind})"


def render_markdown(results: dict) -> str:
    """results.md, from results.json alone (so it can be re-rendered without rerunning)."""
    names = list(results["detectors"])
    counted = counted_detectors(results)
    scores = markdown_table(
        ["System"] + [f"P(AI) {column_name(results, d)}" for d in names]
        + [f"Gap closed {d}" for d in counted],
        [[r["label"]] + [format_ci(r["p_ai"][d]) for d in names]
         + [format_ci(r["gap_closed_by_detector"][d], percent=True) for d in counted]
         for r in results["systems"]])
    kept = markdown_table(
        ["System", "Slop /1K", "Meaning sim.", "Facts kept", "Length ratio", "Chat artefacts",
         "Empty"],
        [[r["label"], format_ci(r["slop_per_1k"], 1), format_ci(r["meaning"]),
          format_ci(r["facts"]), format_ci(r["length_ratio"]),
          format_ci(r["chat_artefacts"], percent=True), str(r["empty"])]
         for r in results["systems"]])
    labels = {r["system"]: r["label"] for r in results["systems"]}
    reading_table = text_measures_table(results)
    fpr = round(100 * results["target_fpr"])
    detectors = markdown_table(
        ["Detector", "Kind", "AUROC human vs AI draft", "Gap closed", "AUROC human vs SFT+DPO",
         f"Threshold at {fpr}% FPR"] + [f"flagged: {labels[k]}" for k in labels],
        [[d, info["kind"], format_ci(info["auroc"]),
          ("counted" if d in counted else NOT_COUNTED if info["kind"] == "evaluation"
           else "not counted (training judge)"),
          f"{info['auroc_vs_human']['sft+dpo']:.2f}" if "sft+dpo" in info["auroc_vs_human"]
          else "—", f"{info['threshold']:.3f}"]
         + [f"{round(100 * info['flagged'][k])}%" if k in info["flagged"] else "—"
            for k in labels]
         for d, info in results["detectors"].items()])
    missing = "".join(f"\n- **{d}** not run: {why}" for d, why in results["unavailable"].items())
    checks = target_rows(results)
    targets = ("\nTargets for the SFT+DPO stacked rewrites (differences in mean P(AI), facts and "
               "slop on the same items, 95% paired bootstrap CI). " + VERDICT_RULE + "\n\n"
               + markdown_table(["Target", "Measured", "Verdict"], checks) + "\n") \
        if checks else ""
    experiment = f", experiment `{results['experiment']}`" if results.get("experiment") else ""
    return (
        f"Preset `{results['preset']}`{experiment} ({results['model']}), {results['n_items']} "
        f"held-out drafts from the dev split, {results['date']}. Means with 95% bootstrap CIs "
        f"({results['n_bootstrap']} resamples).\n\n"
        + (f"What a reader sees first: how often each system's text loops, says a clause twice in "
           f"other words, stops at the token cap or mid-sentence, or states a fact its draft does "
           f"not have. Read the detectors' scores below together with it: a text that repeats "
           f"itself moves a detector, and a reader at once.\n\n"
           f"{reading_table}" if reading_table else "")
        + f"{scores}\n\n"
        "P(AI): each detector's probability that the text is AI-written. Gap closed, per "
        "evaluation detector that separates human text from the AI drafts (AUROC CI above 0.5): "
        "(P_source − P_system) / (P_source − P_human) on mean P(AI), 0% = still reads like the AI "
        "draft, 100% = reads like the human text. The training judge is the detector training "
        "choices may use, so it is shown but never counted.\n\n"
        f"{kept}\n\nMeaning sim.: MiniLM cosine with the source draft; facts kept: share of the "
        "draft's numbers, dates, URLs and names found in the output.\n\n"
        f"{detectors}\n\nFlagged: share of texts scoring above a threshold set so that at "
        f"most {fpr}% of the human texts are flagged. Evaluation detectors are trained and "
        "calibrated on training-split and validation paragraphs only, never on these drafts.\n"
        f"{missing}\n{targets}")

TEXT_COLUMNS = (("loops", "Loops", True), ("restated", "Restated clause", True),
                ("hit_cap", "Hit token cap", True), ("unfinished", "Ends mid-sentence", True),
                ("invented_facts", "Invented facts /rewrite", False),
                ("any_invented", "≥ 1 invented fact", True), ("identical", "Identical to draft", True),
                ("empty_rate", "Empty", True))


def text_measures_table(results: dict) -> str:
    """The table of what reading the texts shows, with its note (empty for results.json from
    before these measures)."""
    if "loops" not in results["systems"][0]:
        return ""
    body = [[r["label"]] + [format_ci(r.get(key), percent=percent) if r.get(key) else
                            ("not recorded" if key == "hit_cap" and r["system"] not in
                             ("source", "human") else "—")
                            for key, _, percent in TEXT_COLUMNS] for r in results["systems"]]
    return (markdown_table(["System"] + [name for _, name, _ in TEXT_COLUMNS], body) +
            f"\n\nLoops: share of texts in which some {LOOP_N}-word sequence occurs twice. "
            f"Restated clause: share in which two clauses say the same in other words (each with "
            f"at least {RESTATE_MIN_WORDS} content words, {100 * RESTATE_OVERLAP:.0f}% of the "
            "smaller one's shared), the repeat a ban on verbatim ones leaves. Hit token cap: share "
            "of rewrites stopped by the generation cap, not by the model (cut short). Ends "
            "mid-sentence: share whose last character, closing quotes and brackets aside, is no "
            ". ! ? or …, cap or no cap (a closing code fence or a list item ends a text too; the "
            "L2R human paragraphs often lack their last full stop, so compare with the drafts). "
            "Invented facts: numbers, dates, URLs and names in the text that the draft does not "
            "have (the human reference's count is what a person adds)."
            + restated_difference(results.get("paired_differences", {})) + "\n\n")


def restated_difference(paired: dict) -> str:
    """The restated-clause rate of SFT+DPO minus SFT's on the same drafts, as a sentence: loops
    have theirs among the targets, restatements none."""
    diff = paired.get("restated sft+dpo - sft")
    if not diff:
        return ""
    return (f" Restated clause, SFT+DPO − SFT on the same drafts (paired): {format_ci(diff, 3)}, "
            f"{reading('restated', diff)}.")


def detectors_frame(results: dict):
    """Per detector: kind, AUROC with CI, whether gap closed counts it, AUROC of human text vs
    each system, threshold at the target FPR, share of each system flagged."""
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd
    counted = counted_detectors(results)
    return pd.DataFrame({name: {"kind": info["kind"],
                                "AUROC human vs AI draft": format_ci(info["auroc"]),
                                "gap closed": "counted" if name in counted else "not counted",
                                **{f"AUROC human vs {SYSTEMS[k]}": round(v, 2)
                                   for k, v in info["auroc_vs_human"].items() if k != "source"},
                                "threshold": round(info["threshold"], 3),
                                **{f"flagged: {SYSTEMS[k]}": f"{100 * v:.0f}%"
                                   for k, v in info["flagged"].items()}}
                         for name, info in results["detectors"].items()})


def headline(results: dict) -> str:
    """The table in sentences, for the notebook's conclusion (every number comes from results)."""
    lines = []
    counted = counted_detectors(results)
    for name, info in results["detectors"].items():
        a = info["auroc"]
        what = ("separates them better than chance, so it counts" if name in counted else
                "separates them, but it is the training judge: shown, never counted"
                if separates(a) else f"{NOT_COUNTED} (its CI reaches 0.5)")
        lines.append(f"{name} ({info['kind']}): AUROC {format_ci(a)} on human vs AI draft; it "
                     f"{what}.")
    for r in results["systems"]:
        if r["system"] in ("source", "human"):
            continue
        gaps = ", ".join(f"{d} {format_ci(r['gap_closed_by_detector'][d], percent=True)}"
                         for d in counted) or "no detector separates, so none"
        lines.append(f"{r['label']}: gap closed {gaps}; meaning similarity "
                     f"{format_ci(r['meaning'])}, facts kept {format_ci(r['facts'])}, slop "
                     f"{format_ci(r['slop_per_1k'], 1)} per 1K tokens.")
    verdicts = [row[2].strip("*") for row in target_rows(results)]
    lines.append("Targets: " + ", ".join(f"{verdicts.count(v)} {v}" for v in
                                         ("met", "not shown", "not met", NOT_COUNTED)) + ".")
    return "\n".join(lines)


# display labels of helpers/infer/systems.py's systems (checked against that list below)
SYSTEM_LABELS = {"base": "base zero-shot", "sft": "SFT", "dpo-only": "DPO only",
                 "sft+dpo": "SFT+DPO stacked"}
if set(SYSTEM_LABELS) != set(SYSTEM_NAMES):
    raise ImportError(f"SYSTEM_LABELS names {sorted(SYSTEM_LABELS)}, but the systems are "
                      f"{list(SYSTEM_NAMES)} (helpers/infer/systems.py)")
# every text an evaluation row holds, in table order: the draft, each system, the human text
SYSTEMS = {"source": "source AI draft", **{name: SYSTEM_LABELS[name] for name in SYSTEM_NAMES},
           "human": "human reference"}
