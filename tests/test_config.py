import pytest

from helpers.core.config import PRESETS, get_config


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


def test_experiment_gets_its_own_folder_and_the_default_keeps_its_paths(runs, monkeypatch):
    assert get_config("smoke").runs_dir == runs / "smoke"
    assert get_config("smoke", experiment="high-lr").runs_dir == runs / "smoke" / "high-lr"
    monkeypatch.setenv("HUMANIZER_EXPERIMENT", "from-env")
    assert get_config("smoke").experiment == "from-env"
    assert get_config("smoke", experiment="").runs_dir == runs / "smoke"


@pytest.mark.parametrize("name", ["high lr", "../up", "a/b", ".hidden", "data", "adapters"])
def test_bad_experiment_names_are_refused(runs, name):
    with pytest.raises(ValueError, match="experiment name"):
        get_config("smoke", experiment=name)


def test_input_path_prefers_the_experiment_and_falls_back_to_the_default_run(runs, capsys):
    default, exp = get_config("smoke"), get_config("smoke", experiment="high-lr")
    assert exp.input_path("data") == runs / "smoke" / "high-lr" / "data"  # neither exists
    default.path("data").mkdir()
    assert exp.input_path("data") == runs / "smoke" / "data"
    assert "reading the default run's" in capsys.readouterr().out
    exp.path("data").mkdir()
    assert exp.input_path("data") == runs / "smoke" / "high-lr" / "data"
    assert default.input_path("adapters/sft") == runs / "smoke" / "adapters" / "sft"


def test_each_notebooks_config_is_recorded_beside_the_artifacts(runs):
    import json

    get_config("smoke", experiment="high-lr", notebook="04", sft_lr=1e-3)
    get_config("smoke", experiment="high-lr", notebook="05")
    saved = json.loads((runs / "smoke" / "high-lr" / "config.json").read_text())
    assert saved["preset"] == "smoke" and saved["experiment"] == "high-lr"
    assert list(saved["notebooks"]) == ["04", "05"]
    assert saved["notebooks"]["04"]["overrides"] == {"sft_lr": 1e-3}
    assert saved["notebooks"]["04"]["config"]["sft_lr"] == 1e-3
    assert saved["notebooks"]["05"]["config"]["sft_lr"] == PRESETS["smoke"].get("sft_lr", 2e-4)
    assert not (runs / "smoke" / "config.json").exists()  # the default run is untouched


def test_list_experiments_names_recorded_runs_only(runs):
    from helpers.core.config import list_experiments

    assert list_experiments("smoke") == []
    get_config("smoke", notebook="00")
    get_config("smoke", experiment="b", notebook="04")
    get_config("smoke", experiment="a", notebook="04")
    get_config("smoke").path("quantized_model").mkdir()
    (runs / "smoke" / "quantized_model" / "config.json").write_text('{"model_type": "llama"}')
    assert list_experiments("smoke") == ["", "a", "b"]


def test_unread_override_warns_naming_the_field_and_its_reader(runs, monkeypatch):
    import warnings

    from helpers.core import config

    monkeypatch.setattr(config, "FIELDS_READ", {"01": ("seed", "n_eval"), "07": ("seed", "n_bootstrap")})
    with pytest.warns(UserWarning, match=r"n_eval=50 has no effect.*notebook 01 does"):
        get_config("smoke", notebook="07", n_eval=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_config("smoke", notebook="07", n_bootstrap=10)
        get_config("smoke", notebook="01", n_eval=50)


def test_field_trace_records_reads_but_not_copies():
    import dataclasses

    from helpers.core.config import start_field_trace, stop_field_trace

    cfg = get_config("smoke")
    start_field_trace()
    try:
        cfg.sft_steps
        copy = dataclasses.replace(cfg, seed=1)
        copy.to_dict()
        copy.dpo_beta
    finally:
        fields = stop_field_trace()
    assert fields == ["dpo_beta", "sft_steps"]
    cfg.seed
    assert "__getattribute__" not in type(cfg).__dict__ and stop_field_trace() == []
