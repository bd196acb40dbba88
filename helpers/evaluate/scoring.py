"""Notebook 07's results: every system's texts scored by every detector and
measure, summarised with 95% CIs into runs/<preset>/results.json, and
results.md rendered from that JSON.

    python -m helpers.evaluate.scoring --preset workshop   # re-render results.md
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from helpers.core.config import get_config
from helpers.core.io import DataError, atomic_write_json, atomic_write_text, iter_jsonl, read_json
from helpers.core.statistics import (
    auroc,
    bootstrap_ci,
    gap_closed,
    paired_bootstrap_ci,
    threshold_at_fpr,
)
from helpers.core.text_measures import (
    fact_preservation,
    has_chat_artefact,
    invented_facts,
    is_empty,
    is_identical,
    length_ratio,
    repeat_and_ending_flags,
    slop_per_1k,
)
from helpers.evaluate.meaning import meaning_similarity
from helpers.evaluate.tables import SYSTEMS, render_markdown
from helpers.evaluate.verdicts import separates


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
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd
    return pd.DataFrame([{"detector": name, "system": SYSTEMS[key], "P(AI)": p}
                         for name, by_system in scores.items()
                         for key, values in by_system.items() for p in values])


def plot_scores(scores: dict):
    """P(AI) per text: one panel per detector, one violin + dots per system."""
    # deferred: matplotlib is slow to import, and only this path needs it
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
    clauses restated in other words, endings cut mid-sentence, invented facts (count, and whether
    any), identical to the draft, empty, chat artefacts. Identical and invented are against the
    draft, so the draft itself has none."""
    source = texts["source"]
    against = {key: outputs for key, outputs in texts.items() if key != "source"}
    invented = {key: np.array([len(invented_facts(s, o)) for s, o in zip(source, outputs)],
                              dtype=float) for key, outputs in against.items()}
    by_system = {key: repeat_and_ending_flags(outputs) for key, outputs in texts.items()}
    return {
        **{measure: {k: np.array(by_system[k][measure]) for k in texts}
           for measure in by_system["source"]},
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
    if "sft" in texts and "sft+dpo" in texts:  # does DPO repeat more than the model it began from?
        for measure in ("loops", "restated"):  # verbatim, and in other words
            paired[f"{measure} sft+dpo - sft"] = paired_bootstrap_ci(
                _mean_difference, measured[measure]["sft+dpo"], measured[measure]["sft"], **boot)
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
    parser = argparse.ArgumentParser(description="Re-render results.md from results.json.")
    parser.add_argument("--preset", default=None)
    cfg = get_config(parser.parse_args().preset)
    path = cfg.runs_dir / "results.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run notebook 07 first")
    print(write_results(cfg, read_json(path))[1])


if __name__ == "__main__":
    main()
