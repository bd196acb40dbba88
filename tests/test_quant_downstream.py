"""The downstream comparison's arithmetic: paired differences on the same items."""
import importlib.util

import numpy as np
import pytest

from helpers.core.config import REPO_ROOT

spec = importlib.util.spec_from_file_location(
    "quant_downstream", REPO_ROOT / "experiments" / "quant_downstream.py")
quant_downstream = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quant_downstream)


def test_paired_rows_drop_items_missing_in_either_arm_and_difference_mixed_minus_uniform():
    measures = {"facts kept": {"uniform": [1.0, 2.0, 3.0, np.nan], "mixed": [2.0, 2.0, 5.0, 1.0]}}
    (row,) = quant_downstream.paired_rows(measures, n_boot=200, seed=0)
    assert row["measure"] == "facts kept"
    assert row["uniform"] == 2.0 and row["mixed"] == 3.0
    diff = row["mixed - uniform"]
    assert diff["mean"] == pytest.approx(1.0) and diff["n"] == 3
    assert 0.0 <= diff["lo"] <= 1.0 <= diff["hi"] <= 2.0  # per-item differences are 1, 0, 2


def test_identical_arms_differ_by_exactly_zero():
    measures = {"loss": {"uniform": [0.5, 0.7, 0.9], "mixed": [0.5, 0.7, 0.9]}}
    diff = quant_downstream.paired_rows(measures, n_boot=50, seed=1)[0]["mixed - uniform"]
    assert diff["mean"] == diff["lo"] == diff["hi"] == 0.0


def test_the_reading_follows_each_measures_better_side():
    lower, higher = {"mean": -0.07, "lo": -0.1, "hi": -0.04}, {"mean": 0.03, "lo": 0.01, "hi": 0.05}
    straddles = {"mean": 0.01, "lo": -0.05, "hi": 0.07}
    assert quant_downstream.reading("validation loss (nats/token)", lower) == "mixed better"
    assert quant_downstream.reading("P(AI) n-gram judge", higher) == "mixed worse"
    assert quant_downstream.reading("meaning", higher) == "mixed better"
    assert quant_downstream.reading("facts kept", straddles) == "no difference shown"


def test_the_table_is_rebuilt_from_the_saved_result():
    result = {"preset": "smoke", "uniform": {"bits": 4, "group_size": 32, "bpw": 5.0},
              "mixed_bpw": 4.97, "base_kl": {"uniform": 0.5, "mixed": None}, "steps": 3,
              "n_val_rows": 2, "n_drafts": 2, "date": "2026-12-02", "command": "python x.py",
              "rows": [{"measure": "meaning", "uniform": 0.8, "mixed": 0.9,
                        "mixed - uniform": {"mean": 0.1, "lo": 0.05, "hi": 0.15, "n": 2}}]}
    text = quant_downstream.markdown(result)
    assert text.startswith("Preset `smoke`, uniform at 5.000 and mixed at 4.970 stored bpw, SFT 3")
    assert "| base: KL to float32 (notebook 03) | 0.500 | — | — | — |" in text
    assert text.endswith("| meaning | 0.800 | 0.900 | 0.100 [0.050, 0.150] | mixed better |\n")
