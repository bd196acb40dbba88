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


def test_stages_partition_the_fields_exactly():
    import dataclasses

    from helpers.core.config import STAGES, Config, stage_fields

    owned = [name for stage in STAGES for name in stage_fields(stage)]
    assert sorted(owned) == sorted(f.name for f in dataclasses.fields(Config))
    assert len(owned) == len(set(owned))  # no field in two stages
    assert set(Config.__mro__[1:-1]) == set(STAGES)
    assert all(stage.__doc__ and "notebook" in stage.__doc__ for stage in STAGES)
    assert stage_fields(STAGES[0])[:3] == ("preset", "experiment", "seed")


def test_presets_name_existing_fields_and_flat_names_still_work():
    import dataclasses

    from helpers.core.config import Config, SFTSettings, stage_fields

    fields = {f.name for f in dataclasses.fields(Config)}
    assert all(set(preset) <= fields for preset in PRESETS.values())
    cfg = get_config("workshop", sft_lr=1e-3)
    assert cfg.sft_lr == 1e-3 and cfg.to_dict()["sft_lr"] == 1e-3 and set(cfg.to_dict()) == fields
    assert "sft_lr" in stage_fields(SFTSettings) and "lora_rank" not in stage_fields(SFTSettings)


def test_notebook_stages_name_every_notebook_with_known_stages():
    from helpers.core.config import NOTEBOOK_STAGES, STAGES

    assert list(NOTEBOOK_STAGES) == [f"{i:02d}" for i in range(8)]
    assert all(set(stages) <= set(STAGES[1:]) for stages in NOTEBOOK_STAGES.values())


def test_override_outside_the_later_stages_warns_naming_its_readers(runs):
    import warnings

    with pytest.warns(UserWarning, match=r"notebook 04: override calib_texts=3 has no effect: this "
                                         r"notebook and the later ones never read 'calib_texts' "
                                         r"\(notebook 02, 03 does: set it there\)"):
        get_config("smoke", notebook="04", calib_texts=3)
    with pytest.warns(UserWarning, match=r"override sft_steps=2 has no effect"):
        get_config("smoke", notebook="07", sft_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_config("smoke", notebook="04", sft_steps=2)  # its own stage
        get_config("smoke", notebook="04", n_bootstrap=10)  # a later notebook's stage
        get_config("smoke", notebook="07", seed=3, model="x/y")  # ModelSettings: every notebook
        get_config("smoke", notebook="02", calib_texts=3)


def test_show_settings_prints_the_stage_with_this_runs_values(capsys):
    from helpers.core.config import LoraSettings, settings_table, show_settings

    cfg = get_config("smoke", lora_rank=5)
    show_settings(cfg, LoraSettings)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"LoraSettings: {LoraSettings.__doc__}"
    assert [line.split()[0] for line in lines[1:]] == ["lora_rank", "lora_alpha", "lora_dropout",
                                                       "lora_layers", "lora_targets"]
    assert lines[1] == "  lora_rank                5   (default 8)"
    assert lines[2] == "  lora_alpha               16.0"
    assert settings_table(cfg, LoraSettings) == "\n".join(lines)
