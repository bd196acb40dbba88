"""Verdicts: a target is met only when its whole 95% CI is on the right side; a
difference whose CI includes 0 is "not shown"; a detector that cannot tell
human text from the drafts is not counted.
"""
from __future__ import annotations

import operator

import numpy as np

from helpers.core.statistics import format_ci, paired_bootstrap_ci
from helpers.core.text_measures import LOOP_N

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
               "chat artefacts": "<", "loops": "<", "restated": "<", "cap hits": "<",
               "unfinished": "<", "invented facts": "<"}


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
