"""experiments/decoding.py's --setting parser: Config fields only, integers where the field is one."""
import importlib.util
import re

import pytest

from helpers.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("decoding", REPO_ROOT / "experiments" / "decoding.py")
decoding = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decoding)


def test_settings_take_each_fields_type():
    setting = decoding.parse_setting("temperature=0,repetition_penalty=1.2,fact_check_samples=4")
    assert setting == {"temperature": 0.0, "repetition_penalty": 1.2, "fact_check_samples": 4}
    assert type(setting["fact_check_samples"]) is int and type(setting["temperature"]) is float


@pytest.mark.parametrize("bad, why", [
    ("temprature=0.7", "no Config field 'temprature'"),
    ("fact_check_samples=2.5", "fact_check_samples takes a whole number"),
    ("temperature=", "temperature takes a number"),
    ("fact_repair=maybe", "fact_repair takes true or false"),
])
def test_a_bad_setting_is_named(bad, why):
    with pytest.raises(SystemExit, match=re.escape(f"--setting '{bad}': '{bad}' is not "
                                                   f"<Config field>=<value> ({why})")):
        decoding.parse_setting(bad)


def test_a_bool_field_takes_true_or_false():
    assert decoding.parse_setting("fact_repair=false,fact_check_samples=2") == {
        "fact_repair": False, "fact_check_samples": 2}
    assert decoding.parse_setting("fact_repair=1")["fact_repair"] is True
