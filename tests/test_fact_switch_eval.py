"""experiments/fact_switch_eval.py: only the switch may change, and each target's verdict."""
import importlib.util

import pytest

from helpers.core.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("fact_switch_eval",
                                              REPO_ROOT / "experiments" / "fact_switch_eval.py")
fact_switch_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fact_switch_eval)


def test_the_setting_takes_the_switch_fields_only():
    assert fact_switch_eval.switch_setting("fact_check_samples=2,fact_resample=false") == {
        "fact_check_samples": 2, "fact_resample": False}
    with pytest.raises(SystemExit, match="not temperature"):
        fact_switch_eval.switch_setting("fact_check_samples=2,temperature=0.7")
    with pytest.raises(SystemExit, match="must be above 0"):
        fact_switch_eval.switch_setting("fact_repair=true")


def values(plain, switch, human):
    return {"plain": plain, "switch": switch, "human": human}


def test_each_target_is_judged_on_its_own_side():
    n = 8
    facts = values([0.5] * n, [1.0] * n, [0.75] * n)  # the switch keeps every fact
    meaning = values([0.9] * n, [0.8, 0.9] * (n // 2), [0.9] * n)  # mean 0.85, CI straddles
    p_ai = values([0.5] * n, [0.6] * n, [0.5] * n)  # 0.1 above the human texts: beyond the margin
    per_item = {side: {"facts kept": facts[side], "meaning": meaning[side],
                       "P(AI) style": p_ai[side]} for side in ("plain", "switch", "human")}
    targets = (fact_switch_eval.TARGETS[0], fact_switch_eval.TARGETS[1],
               fact_switch_eval.TARGETS[2], fact_switch_eval.p_ai_target("style"))
    rows = fact_switch_eval.summary_rows(per_item, targets, n_boot=200, seed=0)
    assert [(r["measure"], r["verdict"]) for r in rows] == [
        ("facts kept", "met"), ("facts kept", "met"), ("meaning", "not shown"),
        ("P(AI) style", "not met")]
    assert rows[0]["switch - plain"]["mean"] == pytest.approx(0.5)
    assert rows[3]["switch - human"]["mean"] == pytest.approx(0.1)


def test_the_table_is_rebuilt_from_the_saved_result_alone(tmp_path):
    from helpers.evaluate.experiments import save_experiment

    ci = {"mean": 0.95, "lo": 0.9, "hi": 1.0}
    diff = {"mean": 0.2, "lo": 0.1, "hi": 0.3}
    result = {"command": "python experiments/fact_switch_eval.py", "date": "2026-12-05",
              "preset": "smoke", "n": 2, "system": "sft+dpo", "seconds": 9,
              "empty": {"plain": 0, "switch": 1},
              "rows": [{"measure": "facts kept", "target": "≥ 0.90", "plain": ci, "switch": ci,
                        "switch - plain": diff, "switch - human": diff, "verdict": "met"},
                       {"measure": "chat artefacts", "target": "≤ 1%", "plain": ci, "switch": ci,
                        "switch - plain": diff, "switch - human": diff, "verdict": "not met"}]}
    written = save_experiment(tmp_path, "fact_switch_eval", result, fact_switch_eval.markdown)
    assert save_experiment(tmp_path, "fact_switch_eval", None, fact_switch_eval.markdown) == written
    assert written.endswith(
        "| facts kept | ≥ 0.90 | 0.95 [0.90, 1.00] | 0.95 [0.90, 1.00] | 0.200 [0.100, 0.300], "
        "better | 0.200 [0.100, 0.300] | met |\n"
        "| chat artefacts | ≤ 1% | 95% [90, 100] | 95% [90, 100] | 20% [10, 30], worse "
        "| 20% [10, 30] | **not met** |\n"
        "| empty outputs | none | 0 | 1 | — | — | **not met** |\n")
