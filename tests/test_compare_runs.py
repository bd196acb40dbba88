"""experiments/compare_runs.py: runs compared on the same validation drafts, paired."""
import importlib.util
import math

import pytest

from helpers.core.config import REPO_ROOT
from helpers.evaluate.verdicts import paired_difference, reading

spec = importlib.util.spec_from_file_location("compare_runs", REPO_ROOT / "experiments" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def values(p_ai, facts):
    n = len(p_ai)
    return {"P(AI)": p_ai, "meaning": [0.9] * n, "facts kept": facts, "slop/1K": [0.0] * n,
            "loops": [0.0] * n, "restated": [0.0] * n, "cap hits": [0.0] * n,
            "unfinished": [0.0] * n, "invented facts": [0.0] * n}


def test_later_runs_are_differenced_against_the_first_on_the_same_system():
    per_item = {("default", "sft"): values([0.5, 0.6, 0.7], [0.5, 1.0, math.nan]),
                ("default", "sft+dpo"): values([0.4, 0.4, 0.4], [1.0, 1.0, 1.0]),
                ("fact-complete", "sft"): values([0.5, 0.6, 0.7], [1.0, 1.0, 1.0])}
    rows = compare_runs.summary_rows(per_item, n_boot=200, seed=0)
    assert [(r["run"], r["system"]) for r in rows] == list(per_item)
    assert "difference" not in rows[0] and "difference" not in rows[1]
    facts = rows[2]["difference"]["facts kept"]
    assert facts["mean"] == pytest.approx(0.25) and facts["n"] == 2  # the NaN draft is left out
    assert facts["first"] == pytest.approx(0.75) and facts["second"] == 1.0
    assert rows[2]["difference"]["P(AI)"]["mean"] == rows[2]["difference"]["P(AI)"]["hi"] == 0.0


def test_a_run_without_the_first_runs_system_gets_no_difference():
    per_item = {("default", "sft"): values([0.5], [1.0]),
                ("ranked", "sft+dpo"): values([0.4], [1.0])}
    assert "difference" not in compare_runs.summary_rows(per_item, n_boot=20, seed=0)[1]


def test_paired_difference_is_second_minus_first_and_reading_follows_the_better_side():
    diff = paired_difference([0.6, 0.7, 0.8, 0.9], [0.5, 0.5, 0.6, 0.6], n_boot=500, seed=0)
    assert diff["mean"] == pytest.approx(-0.2) and diff["hi"] < 0
    assert reading("P(AI) n-gram judge", diff) == "better"
    assert reading("facts kept", diff) == "worse"
    assert reading("meaning", {"mean": 0.0, "lo": -0.1, "hi": 0.1}) == "no difference shown"
    # nothing changed on any item: a CI of [0, 0] shows no difference, it is not "worse"
    assert reading("slop/1K", {"mean": 0.0, "lo": 0.0, "hi": 0.0}) == "no difference shown"
    assert reading("invented facts", {"mean": 0.3, "lo": 0.0, "hi": 0.7}) == "no difference shown"


def test_the_table_names_the_difference_and_its_reading():
    ci = lambda m: {"mean": m, "lo": m - 0.01, "hi": m + 0.01, "n": 3}  # noqa: E731
    row = lambda run: {"run": run, "system": "sft", **{m: ci(0.5) for m in compare_runs.MEASURES}}  # noqa: E731
    later = {**row("fact-complete"), "seconds": 12,
             "difference": {m: ci(0.1) for m in compare_runs.MEASURES}}
    result = {"preset": "workshop", "n": 3, "date": "2026-12-04", "command": "python x",
              "judge": "n-gram judge", "runs": ["default", "fact-complete"],
              "reference_rows": [{"system": "human reference",
                                  **{m: ci(0.4) for m in compare_runs.MEASURES}}],
              "rows": [row("default"), later]}
    text = compare_runs.markdown(result)
    assert "| — | human reference | 0.40 [0.39, 0.41] |" in text
    assert "| fact-complete | sft | 0.50 [0.49, 0.51]; − default: 0.10 [0.09, 0.11], worse |" in text
    assert "0.50 [0.49, 0.51]; − default: 0.10 [0.09, 0.11], better |" in text  # facts kept
    assert text.rstrip().endswith("| 12 |")


def test_a_result_saved_before_restated_and_unfinished_were_measured_shows_them_as_dashes():
    ci = {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 3}
    old = [m for m in compare_runs.MEASURES if m not in ("restated", "unfinished")]
    result = {"preset": "workshop", "n": 3, "date": "2026-12-04", "command": "python x",
              "judge": "n-gram judge", "runs": ["default"], "reference_rows": [],
              "rows": [{"run": "default", "system": "sft", **{m: ci for m in old}}]}
    assert "| 50% [40, 60] | — | 50% [40, 60] | — |" in compare_runs.markdown(result)


def test_an_experiment_saves_its_measurements_and_rebuilds_its_table_from_them(tmp_path, capsys):
    from helpers.evaluate.experiments import save_experiment

    render = lambda result: f"{result['n']} drafts\n"  # noqa: E731
    assert save_experiment(tmp_path / "experiments", "x", {"n": 3}, render) == "3 drafts\n"
    (tmp_path / "experiments" / "x.md").unlink()
    assert save_experiment(tmp_path / "experiments", "x", None, render) == "3 drafts\n"
    assert (tmp_path / "experiments" / "x.md").read_text() == "3 drafts\n"
    assert capsys.readouterr().out == "3 drafts\n\n3 drafts\n\n"


def test_runs_may_carry_decoding_settings_after_a_colon():
    assert compare_runs.run_list("default, default:no_repeat_ngram=6,top_p=0.5,high-lr") == [
        "default", "default:no_repeat_ngram=6,top_p=0.5", "high-lr"]
    assert compare_runs.run_spec("default:no_repeat_ngram=6,top_p=0.5") == (
        "default", {"no_repeat_ngram": 6, "top_p": 0.5})
    assert compare_runs.run_spec("high-lr") == ("high-lr", {})
    with pytest.raises(SystemExit, match="no Config field 'nope'"):
        compare_runs.run_spec("default:nope=1")


def test_the_text_is_read_loops_restatements_cap_hits_endings_and_invented_facts():
    class Judge:
        def score(self, texts):
            return [0.5] * len(texts)

    class Embedder:
        def __call__(self, texts):
            import numpy as np
            return np.ones((len(texts), 2))

    drafts = ["In 2019 the mill closed.", "Rain fell.", "In 2019 the old mill by the river closed."]
    loop = "the mill closed in that year and then " * 2  # and stops mid-sentence
    restated = "The old mill by the river closed its doors in 2019, so the old mill was closed " \
               "by the river in 2019."
    got = compare_runs.measure_texts([loop, "Rain fell in 1990.", restated], drafts, Judge(),
                                     Embedder(), [], capped=[True, False, False])
    assert got["loops"] == [1.0, 0.0, 0.0] and got["cap hits"] == [1.0, 0.0, 0.0]
    assert got["restated"] == [0.0, 0.0, 1.0] and got["unfinished"] == [1.0, 0.0, 0.0]
    assert got["invented facts"] == [0.0, 1.0, 0.0]  # 1990 is not in the draft
    refs = compare_runs.measure_texts(drafts, drafts, Judge(), Embedder(), [])
    assert all(math.isnan(c) for c in refs["cap hits"])  # not generated: no cap to hit
