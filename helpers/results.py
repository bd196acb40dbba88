"""Notebook 07's results: every system's texts scored by every detector and metric, summarised
with 95% CIs into runs/<preset>/results.json, and results.md rendered from that JSON (README
embeds it through `python -m helpers.report`).

    python -m helpers.results --preset workshop   # re-render results.md from results.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import operator
from pathlib import Path

import numpy as np

from .config import RUNS_ROOT
from .io import DataError, atomic_write_json, atomic_write_text, iter_jsonl, read_json
from .metrics import (auroc, bootstrap_ci, gap_closed, meaning_similarity, paired_bootstrap_ci,
                      threshold_at_fpr)
from .text_measures import (LOOP_N, fact_preservation, has_chat_artefact, has_loop,
                            invented_facts, is_empty, is_identical, length_ratio, slop_per_1k)

SYSTEMS = {"source": "source AI draft", "base": "base zero-shot", "sft": "SFT",
           "dpo-only": "DPO only", "sft+dpo": "SFT+DPO stacked", "human": "human reference"}


def load_rewrites(path: str | Path) -> list[dict]:
    """Notebook 06's rewrites.jsonl, checked: each row needs text `source`, `human` and an
    `outputs` object of texts, with the same systems on every row; `hit_cap` (whether each
    system's rewrite stopped at the token cap) is optional: files written before it was recorded
    load without it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no rewrites; run notebook 06_stacked_inference.ipynb "
                                "with the same preset first")
    rows, systems = [], None
    for line_no, row in iter_jsonl(path, strict=True):
        for name in ("source", "human"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}:{line_no}: field {name!r} missing or not text")
        outputs = row.get("outputs")
        if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
            raise DataError(f"{path}:{line_no}: field 'outputs' must map system names to texts")
        unknown = set(outputs) - set(SYSTEMS)
        if unknown:
            raise DataError(f"{path}:{line_no}: unknown systems {sorted(unknown)} in 'outputs'")
        if systems is not None and set(outputs) != systems:
            raise DataError(f"{path}:{line_no}: systems {sorted(outputs)} differ from line 1's "
                            f"{sorted(systems)}")
        capped = row.get("hit_cap")
        if capped is not None and (not isinstance(capped, dict) or set(capped) != set(outputs)
                                   or not all(isinstance(v, bool) for v in capped.values())):
            raise DataError(f"{path}:{line_no}: field 'hit_cap' must map the systems of "
                            f"'outputs' ({sorted(outputs)}) to true or false")
        systems = set(outputs)
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def system_texts(rows: list[dict]) -> dict[str, list[str]]:
    """{system: texts}, in table order: source draft, each system's rewrite, human reference."""
    texts = {"source": [r["source"] for r in rows]}
    for key in SYSTEMS:
        if key in rows[0]["outputs"]:
            texts[key] = [r["outputs"][key] for r in rows]
    texts["human"] = [r["human"] for r in rows]
    return texts


def cap_flags(rows: list[dict]) -> dict[str, list[bool]]:
    """{system: stopped at the token cap, per draft} for the systems rewrites.jsonl recorded it
    for (none in files from before it was recorded)."""
    if not all(isinstance(r.get("hit_cap"), dict) for r in rows):
        return {}
    return {key: [r["hit_cap"][key] for r in rows] for key in rows[0]["hit_cap"]}


def score_all(texts: dict, detectors: dict) -> dict:
    """{detector: {system: P(AI) array}}; NaN for the systems a detector leaves out (its
    `systems`, when it has them)."""
    def scores(detector, key, t):
        wanted = getattr(detector, "systems", None)
        return np.asarray(detector.score(t)) if wanted is None or key in wanted \
            else np.full(len(t), np.nan)
    return {name: {key: scores(d, key, t) for key, t in texts.items()}
            for name, d in detectors.items()}


def scores_frame(scores: dict):
    """Long table (detector, system, P(AI)) for seaborn."""
    import pandas as pd
    return pd.DataFrame([{"detector": name, "system": SYSTEMS[key], "P(AI)": p}
                         for name, by_system in scores.items()
                         for key, values in by_system.items() for p in values])


def plot_scores(scores: dict):
    """P(AI) per text: one panel per detector, one violin + dots per system."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    frame = scores_frame(scores)
    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 3.4), sharey=True,
                             squeeze=False)
    for ax, (name, part) in zip(axes[0], frame.groupby("detector", sort=False)):
        sns.violinplot(data=part, x="P(AI)", y="system", cut=0, inner=None, color="0.9", ax=ax)
        sns.stripplot(data=part, x="P(AI)", y="system", hue="system", palette="deep", size=3.5,
                      legend=False, ax=ax)
        ax.set(title=name, xlim=(0, 1), ylabel="")
    fig.tight_layout()
    return fig


def text_measures_of(texts: dict) -> dict:
    """{measure: {system: per-text values}} read off the texts alone (text_measures.py): loops,
    invented facts (count, and whether any), identical to the draft, empty, chat artefacts.
    Identical and invented are against the draft, so the draft itself has none."""
    source = texts["source"]
    against = {key: outputs for key, outputs in texts.items() if key != "source"}
    invented = {key: np.array([len(invented_facts(s, o)) for s, o in zip(source, outputs)],
                              dtype=float) for key, outputs in against.items()}
    return {
        "loops": {k: np.array([float(has_loop(t)) for t in v]) for k, v in texts.items()},
        "invented_facts": invented,
        "any_invented": {k: (v > 0).astype(float) for k, v in invented.items()},
        "identical": {k: np.array([float(is_identical(o, s)) for s, o in zip(source, v)])
                      for k, v in against.items()},
        "empty_rate": {k: np.array([float(is_empty(t)) for t in v]) for k, v in texts.items()},
        "chat_artefacts": {k: np.array([float(has_chat_artefact(t)) for t in v])
                           for k, v in texts.items()},
    }


def summarize(cfg, texts: dict, scores: dict, embedder, phrases: list[str],
              unavailable: dict | None = None, judge_scores: dict | None = None,
              hit_cap: dict | None = None) -> dict:
    """Everything results.md shows, as plain JSON. `scores` come from evaluation detectors;
    `judge_scores` from the training judge, reported beside them but never judged against;
    `hit_cap` ({system: flags}, `cap_flags`) says which rewrites stopped at the token cap."""
    boot = dict(n_boot=cfg.n_bootstrap, seed=cfg.seed)
    human, source = texts["human"], texts["source"]
    judge_scores = judge_scores or {}
    kinds = {**{d: "evaluation" for d in scores}, **{d: "training judge" for d in judge_scores}}
    scores = {**scores, **judge_scores}
    detectors = {}
    for name, by_system in scores.items():
        by_system = {k: v for k, v in by_system.items() if not np.isnan(v).all()}  # scored
        h, s = by_system["human"], by_system["source"]
        threshold = threshold_at_fpr(h, cfg.target_fpr)
        detectors[name] = {
            "kind": kinds[name],
            "auroc": paired_bootstrap_ci(auroc, h, s, **boot),
            "auroc_vs_human": {key: auroc(h, p) for key, p in by_system.items() if key != "human"},
            "threshold": threshold,
            "flagged": {key: float(np.mean(p > threshold)) for key, p in by_system.items()},
        }
        detectors[name]["separates"] = separates(detectors[name]["auroc"])
        if "sft+dpo" in by_system:  # the do-no-harm check: flagged more often than the drafts?
            detectors[name]["flagged_sft+dpo - source"] = paired_bootstrap_ci(
                _mean_difference, by_system["sft+dpo"] > threshold, s > threshold, **boot)
    facts = {key: np.array([fact_preservation(s, o) for s, o in zip(source, outputs)])
             for key, outputs in texts.items()}
    slop = {key: np.array(slop_per_1k(outputs, phrases)) for key, outputs in texts.items()}
    measured = text_measures_of(texts)
    hit_cap = hit_cap or {}
    rows = []
    for key, outputs in texts.items():
        compared = key != "source"  # the draft compared with itself tells nothing
        rows.append({
            "system": key, "label": SYSTEMS[key],
            "p_ai": {d: bootstrap_ci(scores[d][key], **boot) for d in scores},
            "gap_closed_by_detector": {
                d: paired_bootstrap_ci(gap_closed, scores[d]["source"], scores[d][key],
                                       scores[d]["human"], **boot)
                if not np.isnan(scores[d][key]).all() else None for d in scores},
            "slop_per_1k": bootstrap_ci(slop[key], **boot),
            "meaning": bootstrap_ci(meaning_similarity(embedder, outputs, source), **boot)
            if compared else None,
            "facts": bootstrap_ci(facts[key], **boot) if compared else None,
            "length_ratio": bootstrap_ci([length_ratio(o, s) for s, o in zip(source, outputs)],
                                         **boot) if compared else None,
            **{measure: bootstrap_ci(values[key], **boot) if key in values else None
               for measure, values in measured.items()},
            "hit_cap": bootstrap_ci(np.array(hit_cap[key], dtype=float), **boot)
            if key in hit_cap else None,  # None: not recorded (or not generated: draft, human)
            "empty": int(sum(not o.strip() for o in outputs)),
        })
    differences = {d: {f"{a} - {b}": paired_bootstrap_ci(_mean_difference, by_system[a],
                                                        by_system[b], **boot)
                       for a, b in COMPARISONS if _scored(by_system, a) and _scored(by_system, b)}
                   for d, by_system in scores.items()}
    # facts and slop of each rewrite against the human reference of the same draft
    paired = {f"{measure} {key} - human": paired_bootstrap_ci(_mean_difference, values[key],
                                                              values["human"], **boot)
              for measure, values in (("facts", facts), ("slop", slop),
                                      ("invented", measured["invented_facts"]))
              for key in texts if key not in ("source", "human")}
    if "sft" in texts and "sft+dpo" in texts:  # does DPO loop more than the model it started from?
        paired["loops sft+dpo - sft"] = paired_bootstrap_ci(
            _mean_difference, measured["loops"]["sft+dpo"], measured["loops"]["sft"], **boot)
    return {
        "preset": cfg.preset, "experiment": cfg.experiment, "model": cfg.model,
        "date": dt.date.today().isoformat(), "n_items": len(human), "target_fpr": cfg.target_fpr,
        "n_bootstrap": cfg.n_bootstrap,
        # resamples generation allowed a rewrite that lost facts (0: the fact switch is off); the
        # preset's, as notebook 06 used it unless it was overridden there alone
        "fact_check_samples": cfg.fact_check_samples, "fact_resample": cfg.fact_resample,
        "fact_repair": cfg.fact_repair,
        "detectors": detectors, "unavailable": dict(unavailable or {}), "systems": rows,
        "differences": differences, "paired_differences": paired,
    }


# P(AI) differences on the same items (paired): what the workshop targets compare
COMPARISONS = (("sft+dpo", "human"), ("sft+dpo", "source"), ("sft+dpo", "sft"), ("sft", "base"))


def _scored(by_system: dict, key: str) -> bool:
    return key in by_system and not np.isnan(by_system[key]).all()


def _mean_difference(a, b) -> float | None:
    """Mean of a - b over the items where both exist (facts are NaN for drafts without any)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    return float(d.mean()) if len(d) else None


# --- verdicts ------------------------------------------------------------------------------------

SIDES = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
PARITY_MARGIN = 0.02  # "at or below the human references" allows SFT+DPO this much more P(AI)
NOT_COUNTED = "does not separate these texts: not counted"
VERDICT_RULE = (
    "Verdicts: **met** when the whole 95% CI satisfies the target, **not met** when none of it "
    "does, **not shown** when the CI straddles the limit; parity with the human references is "
    f"non-inferiority, SFT+DPO − human ≤ +{PARITY_MARGIN} in P(AI); only detectors whose "
    "human-vs-draft AUROC CI lies above 0.5 are judged.")
# (difference in `differences`, target, limit, direction): per evaluation detector that separates
DIFFERENCE_TARGETS = (
    ("sft+dpo - sft", "SFT+DPO P(AI) < SFT", 0.0, "<"),
    ("sft+dpo - human", f"SFT+DPO P(AI) at or below human reference (margin +{PARITY_MARGIN})",
     PARITY_MARGIN, "<="),
    ("sft+dpo - source", "SFT+DPO P(AI) < source draft", 0.0, "<"),
    ("sft - base", "SFT P(AI) < base zero-shot", 0.0, "<"),
)


def verdict(ci: dict | None, limit: float, direction: str) -> str:
    """The target `value <direction> limit` judged on a CI: 'met' when both ends satisfy it
    (then the whole interval does), 'not met' when neither does, else 'not shown'; '—' when
    nothing was measured."""
    if direction not in SIDES:
        raise ValueError(f"direction must be one of {sorted(SIDES)}, got {direction!r}")
    if not ci or ci.get("lo") is None or ci.get("hi") is None:
        return "—"
    ok = SIDES[direction]
    lo, hi = ok(ci["lo"], limit), ok(ci["hi"], limit)
    return "met" if lo and hi else "not shown" if lo or hi else "not met"


def paired_difference(a, b, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of b - a over the items both measure (NaN, e.g. a draft without facts, leaves the
    item out), with its 95% paired bootstrap CI; also each side's mean over those items."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = paired_bootstrap_ci(lambda x, y: float(np.mean(y - x)), a[keep], b[keep],
                               n_boot=n_boot, seed=seed)
    return {**diff, "first": float(a[keep].mean()) if keep.any() else None,
            "second": float(b[keep].mean()) if keep.any() else None}


# which side of a paired difference is better, by the measure's name
BETTER_SIDE = {"validation loss": "<", "P(AI)": "<", "meaning": ">", "facts": ">", "slop": "<",
               "chat artefacts": "<", "loops": "<", "cap hits": "<", "invented facts": "<"}


def reading(measure: str, diff: dict | None, better: str = "better", worse: str = "worse") -> str:
    """What a paired difference's CI says in words: `better` or `worse` when the whole CI lies on
    one side of 0 (by the measure's better side, BETTER_SIDE), else 'no difference shown' (a CI
    that includes 0, or touches it, as [0.00, 0.00] does when nothing changed)."""
    side = next(v for k, v in BETTER_SIDE.items() if measure.startswith(k))
    if not diff or diff.get("lo") is None or diff.get("hi") is None:
        return "—"
    below, above = diff["hi"] < 0, diff["lo"] > 0
    if below or above:
        return better if below == (side in ("<", "<=")) else worse
    return "no difference shown"


def separates(auroc_ci: dict | None) -> bool:
    """Can a detector tell human text from the AI drafts? Only if its AUROC CI lies above 0.5:
    otherwise its P(AI) moving says nothing about looking human, so gap closed and the
    targets leave it out."""
    return bool(auroc_ci) and auroc_ci.get("lo") is not None and auroc_ci["lo"] > 0.5


def counted_detectors(results: dict) -> list[str]:
    """Evaluation detectors that separate human text from the drafts: the ones gap closed and
    the targets count."""
    return [d for d, info in results["detectors"].items()
            if info["kind"] == "evaluation" and separates(info["auroc"])]


def _shown(v: str) -> str:
    return "**not met**" if v == "not met" else v


def fact_switch_setting(results: dict) -> str:
    """'2 resamples, sentence repair on' (older results lack fact_resample: they resampled)."""
    n = results["fact_check_samples"]
    repair = "on" if results.get("fact_repair", False) else "off"
    if not results.get("fact_resample", True):
        return f"no resampling, sentence repair {repair} ({n} samples a sentence)"
    return f"{n} resamples, sentence repair {repair}"


def target_rows(results: dict) -> list[list[str]]:
    """[target, measured, verdict] for each target, from the summary alone (rules: VERDICT_RULE)."""
    by_key = {r["system"]: r for r in results["systems"]}
    counted = counted_detectors(results)
    out = []
    for d, diffs in results.get("differences", {}).items():
        info = results["detectors"][d]
        if info["kind"] != "evaluation":
            continue  # the training judge may have been optimised against: never a target
        if d not in counted:
            out.append([f"{d}: P(AI) targets", f"AUROC human vs draft {format_ci(info['auroc'])}",
                        NOT_COUNTED])
            harm = info.get("flagged_sft+dpo - source")
            if harm:  # it cannot say what looks human, but rewriting must not make text look AI
                out.append([f"{d}: flags SFT+DPO no more often than the drafts at "
                            f"{round(100 * results['target_fpr'])}% FPR (margin +{PARITY_MARGIN})",
                            f"difference in flagged share {format_ci(harm, 3)}",
                            _shown(verdict(harm, PARITY_MARGIN, "<="))])
            continue
        for key, target, limit, direction in DIFFERENCE_TARGETS:
            if key in diffs:
                out.append([f"{d}: {target}", f"difference {format_ci(diffs[key], 3)}",
                            _shown(verdict(diffs[key], limit, direction))])
    final = by_key.get("sft+dpo")
    if not final:
        return out
    paired = results.get("paired_differences", {})
    facts_gap, slop_gap = paired.get("facts sft+dpo - human"), paired.get("slop sft+dpo - human")
    human = by_key["human"]
    switch = results["fact_check_samples"] > 0
    out += [
        ["meaning similarity ≥ 0.85", format_ci(final["meaning"]),
         _shown(verdict(final["meaning"], 0.85, ">="))],
        ["facts kept ≥ human reference (paired difference ≥ 0)",
         f"{format_ci(facts_gap, 3)} ({format_ci(final['facts'])} vs {format_ci(human['facts'])})",
         _shown(verdict(facts_gap, 0.0, ">="))],
        ["facts kept ≥ 0.90 with the fact switch on", format_ci(final["facts"]) + (
            f" ({fact_switch_setting(results)})" if switch else ""),
         _shown(verdict(final["facts"], 0.90, ">=")) if switch
         else "— (fact switch off in this run)"],
        ["slop per 1K ≤ human reference (paired difference ≤ 0)",
         f"{format_ci(slop_gap, 2)} ({format_ci(final['slop_per_1k'], 1)} vs "
         f"{format_ci(human['slop_per_1k'], 1)})", _shown(verdict(slop_gap, 0.0, "<="))],
        ["chat artefacts ≤ 1%", format_ci(final["chat_artefacts"], percent=True),
         _shown(verdict(final["chat_artefacts"], 0.01, "<="))],
    ]
    if "loops" not in final:  # results.json from before the text measures: as it was judged then
        return out + [["no empty outputs", f"{final['empty']} of {results['n_items']}",
                       "met" if final["empty"] == 0 else "**not met**"]]
    return out + text_target_rows(results, by_key, paired)


# (measure in a system's row, target, limit): shares of SFT+DPO rewrites, each at most `limit`
RATE_TARGETS = (("loops", f"loop rate (a repeated {LOOP_N}-word sequence) ≤ 3%", 0.03),
                ("hit_cap", "generation cap hit ≤ 1%", 0.01),
                ("empty_rate", "empty ≤ 1%", 0.01),
                ("identical", "identical to the draft ≤ 1%", 0.01))


def text_target_rows(results: dict, by_key: dict, paired: dict) -> list[list[str]]:
    """[target, measured, verdict] for what reading the SFT+DPO texts shows: loops, the cap,
    empty and identical rewrites, invented facts."""
    final, human = by_key["sft+dpo"], by_key["human"]
    out = []
    for measure, target, limit in RATE_TARGETS:
        ci = final.get(measure)
        out.append([target, format_ci(ci, percent=True) if ci else "not recorded",
                    _shown(verdict(ci, limit, "<=")) if ci else "— (not recorded in rewrites.jsonl)"])
        if measure == "loops" and "loops sft+dpo - sft" in paired:
            diff = paired["loops sft+dpo - sft"]
            out.append(["loop rate SFT+DPO not above SFT (paired difference ≤ 0)",
                        f"{format_ci(diff, 3)} ({format_ci(final['loops'], percent=True)} vs "
                        f"{format_ci(by_key['sft']['loops'], percent=True)})",
                        _shown(verdict(diff, 0.0, "<="))])
    invented = paired.get("invented sft+dpo - human")
    out.append(["invented facts per rewrite ≤ human reference (paired difference ≤ 0)",
                f"{format_ci(invented, 2)} ({format_ci(final['invented_facts'])} vs "
                f"{format_ci(human['invented_facts'])})", _shown(verdict(invented, 0.0, "<="))])
    return out


def format_ci(stat: dict | None, digits: int = 2, percent: bool = False) -> str:
    """'0.61 [0.55, 0.67]' (or '35% [10, 60]')."""
    if not stat or stat.get("mean") is None:
        return "—"
    if percent:
        return "{:.0f}% [{:.0f}, {:.0f}]".format(*(100 * stat[k] for k in ("mean", "lo", "hi")))
    return "{0:.{3}f} [{1:.{3}f}, {2:.{3}f}]".format(stat["mean"], stat["lo"], stat["hi"], digits)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def column_name(results: dict, detector: str) -> str:
    kind = results["detectors"][detector]["kind"]
    return detector if kind == "evaluation" else f"{detector} ({kind})"


def save_experiment(out: Path, name: str, result: dict, render) -> str:
    """An experiment's measurements as out/<name>.json and its README table, render(result), as
    out/<name>.md (printed too); with result None the table is rebuilt from the saved JSON."""
    out.mkdir(parents=True, exist_ok=True)
    if result is None:
        result = read_json(out / f"{name}.json")
    else:
        atomic_write_json(out / f"{name}.json", result)
    text = render(result)
    atomic_write_text(out / f"{name}.md", text)
    print(text)
    return text


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
        + (f"What a reader sees first: how often each system's text loops, stops at the token cap "
           f"or states a fact its draft does not have. Read the detectors' scores below together "
           f"with it: a text that repeats itself moves a detector, and a reader at once.\n\n"
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


TEXT_COLUMNS = (("loops", "Loops", True), ("hit_cap", "Hit token cap", True),
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
            f"\n\nLoops: share of texts in which some {LOOP_N}-word sequence occurs twice. Hit token "
            "cap: share of rewrites stopped by the generation cap, not by the model (cut short). "
            "Invented facts: numbers, dates, URLs and names in the text that the draft does not "
            "have (the human reference's count is what a person adds).\n\n")


def detectors_frame(results: dict):
    """Per detector: kind, AUROC with CI, whether gap closed counts it, AUROC of human text vs
    each system, threshold at the target FPR, share of each system flagged."""
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


# --- several experiments side by side ------------------------------------------------------------


def experiment_results_path(preset: str, name: str, runs_root: Path | None = None) -> Path:
    """runs/<preset>/results.json for the default experiment (""), else
    runs/<preset>/<name>/results.json."""
    folder = Path(runs_root or RUNS_ROOT) / preset
    return (folder / name if name else folder) / "results.json"


def compare_experiments(cfg, names: list[str], system: str = "sft+dpo",
                        runs_root: Path | None = None):
    """Long table (experiment, measure, mean, lo, hi) of `system` in each experiment's
    results.json: P(AI) per detector, gap closed per counted detector, meaning, facts kept,
    slop, and how many targets each met."""
    import pandas as pd
    out = []
    for name in names:
        path = experiment_results_path(cfg.preset, name, runs_root)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no results; run notebook 07 with preset "
                                    f"{cfg.preset!r} and experiment {name!r} first")
        results = read_json(path)
        rows = {r["system"]: r for r in results["systems"]}
        if system not in rows:
            raise DataError(f"{path}: system {system!r} missing (has {sorted(rows)})")
        row, label = rows[system], name or "(default)"
        measures = {**{f"P(AI) {d}": row["p_ai"][d] for d in results["detectors"]},
                    **{f"gap closed {d}": row["gap_closed_by_detector"][d]
                       for d in counted_detectors(results)},
                    "meaning": row["meaning"], "facts kept": row["facts"],
                    "slop /1K": row["slop_per_1k"]}
        for measure, ci in measures.items():
            ci = ci or {}
            out.append({"experiment": label, "measure": measure, "mean": ci.get("mean"),
                        "lo": ci.get("lo"), "hi": ci.get("hi")})
        verdicts = [v[2] for v in target_rows(results)]
        out.append({"experiment": label, "measure": "targets met", "mean": verdicts.count("met"),
                    "lo": None, "hi": None})
    return pd.DataFrame(out)


def plot_experiments(frame, columns: int = 4):
    """One panel per measure: each experiment's mean with its 95% CI."""
    import matplotlib.pyplot as plt
    measures = [m for m in frame["measure"].unique() if m != "targets met"]
    n_rows = -(-len(measures) // columns)
    height = 1.0 + 0.35 * frame["experiment"].nunique()
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, height * n_rows),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, measure in zip(axes.flat, measures):
        part = frame[frame["measure"] == measure].astype({"mean": float, "lo": float, "hi": float})
        ax.errorbar(part["mean"], part["experiment"], fmt="o",
                    xerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]])
        ax.set_title(measure, fontsize=9)
    fig.tight_layout()
    return fig


ITEM_SCORES = "item_scores.json"  # {detector: {system: [P(AI) per evaluation draft]}}


def write_results(cfg, results: dict, scores: dict | None = None) -> tuple[Path, Path]:
    """results.json and results.md; with `scores` ({detector: {system: P(AI) per item}}) also
    item_scores.json, from which `make readme` shows one draft's scores in README."""
    json_path = atomic_write_json(cfg.path("results.json"), results)
    md_path = atomic_write_text(cfg.path("results.md"), render_markdown(results))
    if scores is not None:
        atomic_write_json(cfg.path(ITEM_SCORES), {
            d: {k: [round(float(p), 4) for p in v] for k, v in by_system.items()}
            for d, by_system in scores.items()})
    return json_path, md_path


def main() -> None:
    from .config import get_config
    parser = argparse.ArgumentParser(description="Re-render results.md from results.json.")
    parser.add_argument("--preset", default=None)
    cfg = get_config(parser.parse_args().preset)
    path = cfg.runs_dir / "results.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run notebook 07 first")
    print(write_results(cfg, read_json(path))[1])


if __name__ == "__main__":
    main()
