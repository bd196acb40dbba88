"""The downstream comparison's arithmetic: paired differences on the same items."""
import importlib.util

import numpy as np
import pytest

from helpers.config import REPO_ROOT

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
