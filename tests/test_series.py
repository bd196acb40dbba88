"""helpers.tools.series: --set gives every notebook the same overrides, only for a named experiment."""
from __future__ import annotations

import sys

import pytest

from helpers.tools import series


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


def test_busy_cpu_seconds_leaves_out_idle_and_iowait():
    line = "cpu  100 20 30 1000 50 5 5 0 0 0\n"
    assert series.busy_cpu_seconds(line, ticks_per_second=10) == (100 + 20 + 30 + 5 + 5) / 10


def test_other_work_is_the_machine_busy_time_minus_the_series_own():
    # 300 s of wall time: the machine worked 700 CPU seconds, the series 640 of them
    assert series.other_work_cores((1000.0, 10.0), (1700.0, 650.0), 300.0) == 0.2
    # clock granularity can make the difference slightly negative: no work, not negative work
    assert series.other_work_cores((1000.0, 10.0), (1600.0, 611.0), 300.0) == 0.0
    assert series.other_work_cores((None, 10.0), (None, 650.0), 300.0) is None
