"""helpers.series: --set gives every notebook the same overrides, only for a named experiment."""
from __future__ import annotations

import sys

import pytest

from helpers import series


def test_overrides_need_an_experiment_name():
    with pytest.raises(ValueError, match="give the run a name with --experiment"):
        series.run("smoke", only="07", overrides={"fact_check_samples": 2})


@pytest.mark.parametrize("argv, message", [
    (["--set", "fact_check_samples=2"], "--set needs --experiment NAME"),
    (["--experiment", "x", "--set", "fact_check_sample=2"], "no Config field 'fact_check_sample'"),
])
def test_the_command_line_names_a_bad_set(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["series", "--preset", "smoke", *argv])
    with pytest.raises(SystemExit):
        series.main()
    assert message in capsys.readouterr().err
