import pytest

from helpers.config import PRESETS, get_config


def test_presets_and_overrides():
    assert set(PRESETS) == {"smoke", "workshop", "paper"}
    cfg = get_config("smoke", sft_steps=3)
    assert cfg.preset == "smoke" and cfg.sft_steps == 3
    assert cfg.runs_dir.parts[-2:] == ("runs", "smoke")
    assert get_config("paper").model == "openbmb/MiniCPM5-1B"


def test_environment_picks_preset(monkeypatch):
    monkeypatch.setenv("HUMANIZER_PRESET", "paper")
    assert get_config().preset == "paper"


def test_bad_preset_and_field_are_named():
    with pytest.raises(ValueError, match="'tiny'"):
        get_config("tiny")
    with pytest.raises(ValueError, match="sft_stpes"):
        get_config("smoke", sft_stpes=3)
