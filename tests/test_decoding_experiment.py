"""experiments/decoding.py's --setting parser: Config fields only, integers where the field is one."""
import importlib.util

import pytest

from helpers.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("decoding", REPO_ROOT / "experiments" / "decoding.py")
decoding = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decoding)


def test_settings_take_each_fields_type():
    setting = decoding.parse_setting("temperature=0,repetition_penalty=1.2,fact_check_samples=4")
    assert setting == {"temperature": 0.0, "repetition_penalty": 1.2, "fact_check_samples": 4}
    assert type(setting["fact_check_samples"]) is int and type(setting["temperature"]) is float


@pytest.mark.parametrize("bad", ["temprature=0.7", "fact_check_samples=2.5", "temperature="])
def test_a_bad_setting_is_named(bad):
    with pytest.raises(SystemExit, match=f"--setting '{bad}': '{bad}' is not <Config field>=<number>"):
        decoding.parse_setting(bad)
