import json

import numpy as np
import pytest

from helpers.core.config import get_config
from helpers.core.io import DataError
from helpers.evaluate import verdicts
from helpers.evaluate.experiments import compare_experiments, plot_experiments
from helpers.evaluate.scoring import (
    ITEM_SCORES,
    cap_flags,
    load_rewrites,
    score_all,
    summarize,
    system_texts,
    write_results,
)
from helpers.evaluate.tables import headline, render_markdown
from helpers.evaluate.verdicts import (
    NOT_COUNTED,
    VERDICT_RULE,
    counted_detectors,
    separates,
    target_rows,
)

from conftest import LengthDetector, toy_embedder, toy_rewrites, write_jsonl

ROWS = toy_rewrites(base_prefix="Sure! ")


class ConstantDetector:
    """The same P(AI) for every text: cannot tell anything apart (AUROC 0.5)."""

    def score(self, texts):
        return np.full(len(texts), 0.5)


def summary_of(tmp_path, rows=ROWS, **cfg_overrides):
    rows = load_rewrites(write_jsonl(tmp_path / "rewrites.jsonl", rows))
    texts = system_texts(rows)
    scores = score_all(texts, {"Length": LengthDetector(), "Flat": ConstantDetector()})
    judge = score_all(texts, {"judge": LengthDetector()})
    cfg = get_config("smoke", n_bootstrap=50, **cfg_overrides)
    return texts, summarize(cfg, texts, scores, toy_embedder, ["sure"],
                                    unavailable={"RADAR": "offline"}, judge_scores=judge,
                                    hit_cap=cap_flags(rows))


def test_summary_and_markdown(tmp_path):
    texts, summary = summary_of(tmp_path)
    assert list(texts) == ["source", "base", "sft", "sft+dpo", "human"]
    by_key = {r["system"]: r for r in summary["systems"]}
    length_gap = {k: r["gap_closed_by_detector"]["Length"]["mean"] for k, r in by_key.items()}
    assert length_gap["source"] == 0.0 and length_gap["human"] == 1.0
    assert by_key["source"]["meaning"] is None and by_key["sft"]["meaning"]["mean"] < 1.0
    assert by_key["base"]["chat_artefacts"]["mean"] == 1.0
    assert by_key["sft"]["chat_artefacts"]["mean"] == 0.0
    assert by_key["base"]["facts"]["mean"] == 1.0  # "3 May" and the amount both survive
    assert by_key["sft+dpo"]["facts"]["mean"] == 0.0
    assert by_key["human"]["facts"]["mean"] == 1.0  # "May 3rd" is 3 May, "{i}00" kept
    info = summary["detectors"]
    assert info["Length"]["auroc"]["mean"] == 1.0 and info["Length"]["flagged"]["human"] == 0.0
    assert info["Flat"]["auroc"]["mean"] == 0.5 and not info["Flat"]["separates"]
    assert info["judge"]["kind"] == "training judge" and info["Length"]["kind"] == "evaluation"
    assert info["Length"]["auroc_vs_human"]["sft+dpo"] == 0.0  # the shortest texts of all
    assert counted_detectors(summary) == ["Length"]  # not Flat, not the judge
    paired = summary["paired_differences"]
    assert paired["facts sft+dpo - human"]["mean"] == -1.0
    md = render_markdown(json.loads(json.dumps(summary)))  # survives a JSON round trip
    assert "| source AI draft |" in md and "| SFT+DPO stacked |" in md
    assert "P(AI) judge (training judge)" in md and "**RADAR** not run: offline" in md
    assert "Gap closed Length" in md and "Gap closed Flat" not in md
    assert "Gap closed judge" not in md and VERDICT_RULE in md
    assert f"| Flat | evaluation | 0.50 [0.50, 0.50] | {NOT_COUNTED} |" in md
    # tables: scores, what was kept, what the texts show, detectors (header + 5/5/5/3 rows),
    # targets (header + 5 + 2 for Flat + 10 for the texts)
    assert md.count("\n| ") == 6 + 6 + 6 + 4 + 18
    # loops, restated, cap (no hit_cap in these rows), ends mid-sentence
    assert "| SFT+DPO stacked | 0% [0, 0] | 0% [0, 0] | not recorded | 0% [0, 0] |" in md
    length = summary["differences"]["Length"]
    assert length["sft - base"]["mean"] < 0 and length["sft+dpo - human"]["mean"] < 0
    checks = {row[0]: row[2] for row in target_rows(summary)}
    assert checks["Length: SFT+DPO P(AI) at or below human reference (margin +0.02)"] == "met"
    assert checks["Flat: P(AI) targets"] == NOT_COUNTED
    assert not any(k.startswith("judge") for k in checks)
    assert checks["facts kept ≥ human reference (paired difference ≥ 0)"] == "**not met**"
    assert checks["facts kept ≥ 0.90 with the fact switch on"] == "— (fact switch off in this run)"
    assert checks["chat artefacts ≤ 1%"] == "met" and checks["empty ≤ 1%"] == "met"
    assert checks["generation cap hit ≤ 1%"] == "— (not recorded in rewrites.jsonl)"
    assert checks["Flat: flags SFT+DPO no more often than the drafts at 5% FPR (margin +0.02)"] \
        == "met"  # it flags nothing at all
    assert headline(summary).endswith(
        "Targets: 13 met, 0 not shown, 1 not met, 1 does not separate these texts: not counted.")


LOOP = "the river ran past the mill and the town"  # 10 words
RESTATED = ("In 1990 the council spent the town's money on a new bridge, so the money of the town "
            "was spent by the council on the new bridge.")  # no 8 words twice


def looping_rewrite(i: int) -> str:
    """SFT+DPO's rewrite of row i: two loop (and so restate), two restate in other words, one
    stops mid-sentence, one is fine; each invents the year 1990."""
    return [f"In 1990 {LOOP}, and {LOOP}.", f"In 1990 {LOOP}, and {LOOP}.", RESTATED, RESTATED,
            f"In 1990 the council spent {i + 1}00 pounds on",
            f"In 1990 the council spent {i + 1}00 pounds."][i]


def test_text_targets_read_loops_the_cap_and_invented_facts(tmp_path):
    """SFT+DPO loops in 2 of 6 rewrites (SFT in none), restates a clause in 4, ends mid-sentence
    in 1, stopped at the cap in 3 and invents a year in each; the human texts invent nothing."""
    rows = [{**r, "outputs": {**r["outputs"], "sft+dpo": looping_rewrite(i)},
             "hit_cap": {"base": False, "sft": False, "sft+dpo": i % 2 == 0}}
            for i, r in enumerate(ROWS)]
    _, summary = summary_of(tmp_path, rows)
    final = {r["system"]: r for r in summary["systems"]}["sft+dpo"]
    assert final["loops"]["mean"] == pytest.approx(2 / 6)
    assert final["restated"]["mean"] == pytest.approx(4 / 6)
    assert final["unfinished"]["mean"] == pytest.approx(1 / 6)
    assert summary["paired_differences"]["restated sft+dpo - sft"]["mean"] == pytest.approx(4 / 6)
    md = render_markdown(json.loads(json.dumps(summary)))
    assert "Restated clause, SFT+DPO − SFT on the same drafts (paired): 0.667 [" in md
    assert final["hit_cap"]["mean"] == 0.5 and final["invented_facts"]["mean"] == 1.0
    assert final["any_invented"]["mean"] == 1.0 and final["identical"]["mean"] == 0.0
    assert summary["paired_differences"]["loops sft+dpo - sft"]["mean"] == pytest.approx(2 / 6)
    assert summary["paired_differences"]["invented sft+dpo - human"]["mean"] == 1.0
    checks = {row[0]: row[2] for row in target_rows(summary)}
    # 2 of 6: a resample can hold no looping rewrite, so the CI reaches 0
    assert checks["loop rate (a repeated 8-word sequence) ≤ 3%"] == "not shown"
    assert checks["generation cap hit ≤ 1%"] == "**not met**"
    assert checks["invented facts per rewrite ≤ human reference (paired difference ≤ 0)"] \
        == "**not met**"
    assert checks["identical to the draft ≤ 1%"] == "met"


def test_results_from_before_the_restated_and_unfinished_measures_still_render(tmp_path):
    _, summary = summary_of(tmp_path)
    for row in summary["systems"]:
        del row["restated"], row["unfinished"]
    del summary["paired_differences"]["restated sft+dpo - sft"]
    md = render_markdown(json.loads(json.dumps(summary)))
    assert "| SFT+DPO stacked | 0% [0, 0] | — | not recorded | — |" in md
    assert "Restated clause, SFT+DPO − SFT" not in md


def test_rewrites_without_hit_cap_load_and_a_bad_one_is_named(tmp_path):
    rows = load_rewrites(write_jsonl(tmp_path / "old.jsonl", ROWS))
    assert cap_flags(rows) == {}  # files from before hit_cap was recorded
    bad = [ROWS[0] | {"hit_cap": {"base": True}}]
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'hit_cap' must map the systems"):
        load_rewrites(write_jsonl(tmp_path / "bad.jsonl", bad))


@pytest.mark.parametrize("ci,limit,direction,expected", [
    # a difference that should be below 0
    ({"lo": -0.03, "hi": -0.01}, 0.0, "<", "met"),
    ({"lo": -0.012, "hi": 0.002}, 0.0, "<", "not shown"),  # mean below 0, CI includes it
    ({"lo": 0.01, "hi": 0.03}, 0.0, "<", "not met"),
    ({"lo": -0.02, "hi": 0.0}, 0.0, "<", "not shown"),  # an end on 0 is not below it
    # parity: non-inferiority with a margin of +0.02
    ({"lo": -0.002, "hi": 0.02}, 0.02, "<=", "met"),
    ({"lo": -0.002, "hi": 0.036}, 0.02, "<=", "not shown"),
    ({"lo": 0.021, "hi": 0.05}, 0.02, "<=", "not met"),
    # level targets
    ({"lo": 0.85, "hi": 0.88}, 0.85, ">=", "met"),
    ({"lo": 0.84, "hi": 0.87}, 0.85, ">=", "not shown"),
    ({"lo": 0.80, "hi": 0.84}, 0.85, ">=", "not met"),
    ({"lo": 0.0, "hi": 0.0}, 0.01, "<=", "met"),  # no chat artefacts at all
    ({"lo": 0.0, "hi": 0.04}, 0.01, "<=", "not shown"),
    ({"lo": 0.60, "hi": 0.70}, 0.5, ">", "met"),
    ({"mean": None, "lo": None, "hi": None}, 0.0, "<", "—"),
    (None, 0.0, "<", "—"),
])
def test_verdict_on_hand_made_cis(ci, limit, direction, expected):
    assert verdicts.verdict(ci, limit, direction) == expected


def test_fact_switch_target_is_judged_only_when_the_switch_was_on(tmp_path):
    _, summary = summary_of(tmp_path, fact_check_samples=2)
    rows = {row[0]: row[1:] for row in target_rows(summary)}
    measured, verdict = rows["facts kept ≥ 0.90 with the fact switch on"]
    assert verdict == "**not met**"  # 0 of 2 kept
    assert measured.endswith("(2 resamples, sentence repair on)")
    _, summary = summary_of(tmp_path, fact_check_samples=2, fact_resample=False)
    rows = {row[0]: row[1:] for row in target_rows(summary)}
    assert rows["facts kept ≥ 0.90 with the fact switch on"][0].endswith(
        "(no resampling, sentence repair on (2 samples a sentence))")


def test_verdict_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction must be one of"):
        verdicts.verdict({"lo": 0.0, "hi": 1.0}, 0.0, "below")


def test_gap_closed_counts_only_detectors_that_separate():
    assert separates({"mean": 0.70, "lo": 0.67, "hi": 0.73})
    assert not separates({"mean": 0.46, "lo": 0.42, "hi": 0.50})
    assert not separates({"mean": 0.55, "lo": 0.5, "hi": 0.6})  # touching 0.5: no
    assert not separates({"mean": None, "lo": None, "hi": None})
    summary = {"detectors": {
        "A": {"kind": "evaluation", "auroc": {"mean": 0.9, "lo": 0.85, "hi": 0.95}},
        "B": {"kind": "evaluation", "auroc": {"mean": 0.46, "lo": 0.42, "hi": 0.50}},
        "J": {"kind": "training judge", "auroc": {"mean": 0.9, "lo": 0.85, "hi": 0.95}},
    }}
    assert counted_detectors(summary) == ["A"]


def test_compare_experiments_reads_each_experiments_results(tmp_path):
    _, summary = summary_of(tmp_path)
    other = json.loads(json.dumps(summary))
    other["systems"][3]["facts"] = {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 6}
    root = tmp_path / "runs"
    (root / "smoke" / "facts-on").mkdir(parents=True)
    (root / "smoke" / "results.json").write_text(json.dumps(summary))
    (root / "smoke" / "facts-on" / "results.json").write_text(json.dumps(other))
    cfg = get_config("smoke")
    frame = compare_experiments(cfg, ["", "facts-on"], runs_root=root)
    facts = frame[frame.measure == "facts kept"].set_index("experiment")["mean"]
    assert facts.to_dict() == {"(default)": 0.0, "facts-on": 0.5}
    assert set(frame.measure) >= {"P(AI) Length", "P(AI) Flat", "gap closed Length",
                                  "targets met"}
    assert "gap closed Flat" not in set(frame.measure)
    plot_experiments(frame)
    with pytest.raises(FileNotFoundError, match="missing-one.*experiment 'missing-one'"):
        compare_experiments(cfg, ["missing-one"], runs_root=root)


def test_load_rewrites_errors_name_file_line_and_field(tmp_path):
    bad = dict(ROWS[0], outputs={"sft": 3})
    with pytest.raises(DataError, match=r"rewrites.jsonl:2: field 'outputs'"):
        load_rewrites(write_jsonl(tmp_path / "rewrites.jsonl", [ROWS[0], bad]))
    other = dict(ROWS[0], outputs={"sft": "x"})
    with pytest.raises(DataError, match=r":2: systems \['sft'\] differ"):
        load_rewrites(write_jsonl(tmp_path / "rewrites.jsonl", [ROWS[0], other]))
    no_human = {k: v for k, v in ROWS[0].items() if k != "human"}
    with pytest.raises(DataError, match=r":1: field 'human'"):
        load_rewrites(write_jsonl(tmp_path / "rewrites.jsonl", [no_human]))
    with pytest.raises(FileNotFoundError, match="run notebook 06"):
        load_rewrites(tmp_path / "missing.jsonl")


class PartialLength(LengthDetector):
    """A slow detector that scores only what its targets need."""
    systems = ("source", "sft+dpo", "human")


def test_a_detector_that_scores_some_systems_leaves_the_others_blank(tmp_path):
    rows = load_rewrites(write_jsonl(tmp_path / "rewrites.jsonl", ROWS))
    texts = system_texts(rows)
    scores = score_all(texts, {"Part": PartialLength()})
    assert np.isnan(scores["Part"]["sft"]).all() and not np.isnan(scores["Part"]["sft+dpo"]).any()
    summary = summarize(get_config("smoke", n_bootstrap=50), texts, scores, toy_embedder,
                                ["sure"])
    info = summary["detectors"]["Part"]
    assert set(info["flagged"]) == {"source", "sft+dpo", "human"}
    assert info["flagged_sft+dpo - source"]["mean"] == -1.0  # every draft flagged, no rewrite
    by_key = {r["system"]: r for r in summary["systems"]}
    assert by_key["sft"]["p_ai"]["Part"]["mean"] is None
    assert by_key["sft"]["gap_closed_by_detector"]["Part"] is None
    md = render_markdown(json.loads(json.dumps(summary)))
    assert "| Part | evaluation | 1.00 [1.00, 1.00] | counted | 0.00 | 0.600 | 100% | — | — | 0% | 0% |" \
        in md  # flagged: source, base, SFT, SFT+DPO, human
    assert "Part: SFT+DPO P(AI) < SFT" not in md  # SFT not scored: no target row


def test_item_scores_are_written_beside_the_results_for_the_readme_example(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    cfg = SimpleNamespace(path=lambda name: tmp_path / name)
    monkeypatch.setattr("helpers.evaluate.scoring.render_markdown", lambda summary: "| table |\n")
    write_results(cfg, {"n_items": 2}, {"n-gram": {"sft": np.array([0.123456, 0.5])}})
    assert json.loads((tmp_path / ITEM_SCORES).read_text()) == {"n-gram": {"sft": [0.1235, 0.5]}}
    assert (tmp_path / "results.md").read_text() == "| table |\n"
