"""Notebook 07's results: every system's texts scored by every detector and metric, summarised
with 95% CIs into runs/<preset>/results.json, and results.md rendered from that JSON (README
embeds it through `python -m helpers.report`).

    python -m helpers.results --preset workshop   # re-render results.md from results.json
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from .io import DataError, atomic_write_json, atomic_write_text, iter_jsonl, read_json
from .metrics import (auroc, bootstrap_ci, fact_preservation, gap_closed, has_chat_artefact,
                      length_ratio, meaning_similarity, paired_bootstrap_ci, slop_per_1k,
                      threshold_at_fpr)

SYSTEMS = {"source": "source AI draft", "base": "base zero-shot", "sft": "SFT",
           "dpo-only": "DPO only", "sft+dpo": "SFT+DPO stacked", "human": "human reference"}


def load_rewrites(path: str | Path) -> list[dict]:
    """Notebook 06's rewrites.jsonl, checked: each row needs text `source`, `human` and an
    `outputs` object of texts, with the same systems on every row."""
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


def score_all(texts: dict, detectors: dict) -> dict:
    """{detector: {system: P(AI) array}}."""
    return {name: {key: np.asarray(d.score(t)) for key, t in texts.items()}
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


def summarize(cfg, texts: dict, scores: dict, embedder, phrases: list[str],
              unavailable: dict | None = None) -> dict:
    """Everything results.md shows, as plain JSON."""
    boot = dict(n_boot=cfg.n_bootstrap, seed=cfg.seed)
    human, source = texts["human"], texts["source"]
    detectors = {}
    for name, by_system in scores.items():
        h, s = by_system["human"], by_system["source"]
        threshold = threshold_at_fpr(h, cfg.target_fpr)
        detectors[name] = {
            "auroc": paired_bootstrap_ci(auroc, h, s, **boot),
            "threshold": threshold,
            "flagged": {key: float(np.mean(p > threshold)) for key, p in by_system.items()},
        }
    # P(AI) averaged over the detectors, item by item: the basis of the one "gap closed" column
    mean_p = {key: np.nanmean([scores[d][key] for d in scores], axis=0) for key in texts}
    rows = []
    for key, outputs in texts.items():
        compared = key != "source"  # the draft compared with itself tells nothing
        rows.append({
            "system": key, "label": SYSTEMS[key],
            "p_ai": {d: bootstrap_ci(scores[d][key], **boot) for d in scores},
            "gap_closed": paired_bootstrap_ci(gap_closed, mean_p["source"], mean_p[key],
                                              mean_p["human"], **boot),
            "gap_closed_by_detector": {
                d: paired_bootstrap_ci(gap_closed, scores[d]["source"], scores[d][key],
                                       scores[d]["human"], **boot) for d in scores},
            "slop_per_1k": bootstrap_ci(slop_per_1k(outputs, phrases), **boot),
            "meaning": bootstrap_ci(meaning_similarity(embedder, outputs, source), **boot)
            if compared else None,
            "facts": bootstrap_ci([fact_preservation(s, o) for s, o in zip(source, outputs)],
                                  **boot) if compared else None,
            "length_ratio": bootstrap_ci([length_ratio(o, s) for s, o in zip(source, outputs)],
                                         **boot) if compared else None,
            "chat_artefacts": bootstrap_ci([float(has_chat_artefact(o)) for o in outputs], **boot),
            "empty": int(sum(not o.strip() for o in outputs)),
        })
    differences = {d: {f"{a} - {b}": paired_bootstrap_ci(_mean_difference, by_system[a],
                                                        by_system[b], **boot)
                       for a, b in COMPARISONS if a in by_system and b in by_system}
                   for d, by_system in scores.items()}
    return {
        "preset": cfg.preset, "model": cfg.model, "date": dt.date.today().isoformat(),
        "n_items": len(human), "target_fpr": cfg.target_fpr, "n_bootstrap": cfg.n_bootstrap,
        "detectors": detectors, "unavailable": dict(unavailable or {}), "systems": rows,
        "differences": differences,
    }


# P(AI) differences on the same items (paired): what the workshop targets compare
COMPARISONS = (("sft+dpo", "human"), ("sft+dpo", "source"), ("sft+dpo", "sft"), ("sft", "base"))


def _mean_difference(a, b) -> float:
    return float(np.mean(a - b))


def target_rows(results: dict) -> list[list[str]]:
    """[target, measured, verdict] for each target of the workshop preset (issue 6), from the
    summary alone. A difference "< 0" is met when its mean is below 0; the CI says how sure."""
    by_key = {r["system"]: r for r in results["systems"]}
    out = []

    def add(target, measured, met):
        out.append([target, measured, "—" if met is None else ("met" if met else "**not met**")])

    def below(stat, limit=0.0, sure=False):  # sure: the whole CI, not just the mean
        return None if not stat or stat["mean"] is None else stat["hi" if sure else "mean"] <= limit

    for d, diffs in results.get("differences", {}).items():
        for key, target in (("sft+dpo - human", "SFT+DPO P(AI) ≤ human reference"),
                            ("sft+dpo - source", "SFT+DPO P(AI) clearly < source draft (CI < 0)"),
                            ("sft+dpo - sft", "SFT+DPO P(AI) < SFT"),
                            ("sft - base", "SFT P(AI) < base zero-shot")):
            if key in diffs:
                add(f"{d}: {target}", f"difference {format_ci(diffs[key], 3)}",
                    below(diffs[key], sure=key == "sft+dpo - source"))
    final = by_key.get("sft+dpo")
    if final:
        meaning, facts = final["meaning"], final["facts"]
        add("meaning similarity ≥ 0.85", format_ci(meaning),
            None if not meaning or meaning["mean"] is None else meaning["mean"] >= 0.85)
        add("facts kept ≥ 0.95", format_ci(facts),
            None if not facts or facts["mean"] is None else facts["mean"] >= 0.95)
        human_slop = by_key["human"]["slop_per_1k"]
        add("slop per 1K ≤ human reference", f"{format_ci(final['slop_per_1k'], 1)} vs "
            f"{format_ci(human_slop, 1)}", below(final["slop_per_1k"], human_slop["mean"]))
        add("chat artefacts ≤ 1%", format_ci(final["chat_artefacts"], percent=True),
            below(final["chat_artefacts"], 0.01))
        if "empty" in final:
            add("no empty outputs", f"{final['empty']} of {results['n_items']}", final["empty"] == 0)
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


def render_markdown(results: dict) -> str:
    """results.md, from results.json alone (so it can be re-rendered without rerunning)."""
    names = list(results["detectors"])
    main = markdown_table(
        ["System"] + [f"P(AI) {d}" for d in names]
        + ["Gap closed", "Slop /1K", "Meaning sim.", "Facts kept", "Length ratio",
           "Chat artefacts"],
        [[r["label"]] + [format_ci(r["p_ai"][d]) for d in names]
         + [format_ci(r["gap_closed"], percent=True), format_ci(r["slop_per_1k"], 1),
            format_ci(r["meaning"]), format_ci(r["facts"]), format_ci(r["length_ratio"]),
            format_ci(r["chat_artefacts"], percent=True)]
         for r in results["systems"]])
    labels = {r["system"]: r["label"] for r in results["systems"]}
    fpr = round(100 * results["target_fpr"])
    detectors = markdown_table(
        ["Detector", "AUROC human vs AI draft", f"Threshold at {fpr}% FPR"]
        + [f"flagged: {labels[k]}" for k in labels],
        [[d, format_ci(info["auroc"]), f"{info['threshold']:.3f}"]
         + [f"{round(100 * info['flagged'][k])}%" for k in labels]
         for d, info in results["detectors"].items()])
    missing = "".join(f"\n- **{d}** not run: {why}" for d, why in results["unavailable"].items())
    checks = target_rows(results)
    targets = ("\nTargets for the SFT+DPO stacked rewrites (differences in mean P(AI) on the same "
               "items, 95% paired bootstrap CI):\n\n"
               + markdown_table(["Target", "Measured", "Verdict"], checks) + "\n") \
        if checks else ""
    return (
        f"Preset `{results['preset']}` ({results['model']}), {results['n_items']} held-out drafts "
        f"from the dev split, {results['date']}. Means with 95% bootstrap CIs "
        f"({results['n_bootstrap']} resamples).\n\n{main}\n\n"
        "P(AI): each detector's probability that the text is AI-written. Gap closed: "
        "(P_source − P_system) / (P_source − P_human) on P(AI) averaged over the detectors "
        "(0% = still reads like the AI draft, 100% = reads like the human text). Meaning sim.: "
        "MiniLM cosine with the source draft; facts kept: share of the draft's numbers, dates, "
        "URLs and names found in the output.\n\n"
        f"{detectors}\n\nFlagged: share of texts scoring above a threshold set so that at "
        f"most {fpr}% of the human texts are flagged.\n{missing}\n{targets}")


def detectors_frame(results: dict):
    """Per detector: AUROC with CI, threshold at the target FPR, share of each system flagged."""
    import pandas as pd
    return pd.DataFrame({name: {"AUROC human vs AI draft": format_ci(info["auroc"]),
                                "threshold": round(info["threshold"], 3),
                                **{f"flagged: {SYSTEMS[k]}": f"{100 * v:.0f}%"
                                   for k, v in info["flagged"].items()}}
                         for name, info in results["detectors"].items()})


def headline(results: dict) -> str:
    """The table in sentences, for the notebook's conclusion (every number comes from results)."""
    lines = []
    for name, info in results["detectors"].items():
        a = info["auroc"]
        verdict = ("cannot reliably tell human text from AI drafts here (its CI includes 0.5): "
                   "read its column as noise" if a["lo"] <= 0.5 else "separates them better "
                   "than chance")
        lines.append(f"{name}: AUROC {format_ci(a)} on human vs AI draft, so it {verdict}.")
    for r in results["systems"]:
        if r["system"] in ("source", "human"):
            continue
        lines.append(f"{r['label']}: gap closed {format_ci(r['gap_closed'], percent=True)}, "
                     f"meaning similarity {format_ci(r['meaning'])}, facts kept "
                     f"{format_ci(r['facts'])}, slop {format_ci(r['slop_per_1k'], 1)} per 1K tokens.")
    return "\n".join(lines)


def write_results(cfg, results: dict) -> tuple[Path, Path]:
    json_path = atomic_write_json(cfg.path("results.json"), results)
    md_path = atomic_write_text(cfg.path("results.md"), render_markdown(results))
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
