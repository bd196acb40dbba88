"""The one list of systems (helpers/infer/systems.py) and the one loader of a trained run: every
tool takes its adapter names from the list, and the loader loads what the run has trained."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.core.config import get_config
from helpers.evaluate import tables
from helpers.infer import systems
from helpers.tools import export, rewrite_files, serve

REPO = Path(__file__).resolve().parent.parent


def adapter_choices(parser) -> tuple:
    [action] = [a for a in parser._actions if "--adapter" in a.option_strings]
    return tuple(action.choices)


def test_the_list_is_the_switch_settings_in_training_order():
    assert systems.SYSTEMS == ("base", "sft", "dpo-only", "sft+dpo")
    assert systems.SWITCHES["dpo-only"] == (False, True)
    assert [systems.needed_adapters(s) for s in systems.SYSTEMS] == \
        [(), ("sft",), ("sft", "dpo"), ("sft", "dpo")]


def test_the_command_line_and_the_export_accept_exactly_the_list():
    assert adapter_choices(rewrite_files.build_parser()) == systems.SYSTEMS
    assert adapter_choices(export.build_parser()) == systems.SYSTEMS


def test_the_server_accepts_exactly_the_systems_of_a_fully_trained_run(runs):
    cfg = get_config("smoke", experiment="")
    for name in ("sft", "dpo"):  # the files' presence is all trained_systems reads
        systems.adapter_dir(cfg, name).mkdir(parents=True)
        (systems.adapter_dir(cfg, name) / "adapters.safetensors").touch()
    trained = systems.trained_systems(cfg)
    assert trained == systems.SYSTEMS
    assert [serve.pick_adapter({"adapter": s}, trained, "base") for s in trained] == list(trained)
    with pytest.raises(serve.BadRequest, match=r"valid adapters: \['base', 'sft', 'dpo-only'"):
        serve.pick_adapter({"adapter": "merged"}, trained, "base")


def test_the_evaluation_labels_are_keyed_by_the_list():
    assert list(tables.SYSTEMS) == ["source", *systems.SYSTEMS, "human"]
    assert set(tables.SYSTEM_LABELS) == set(systems.SYSTEMS)


def test_no_other_module_spells_the_list():
    """The names appear as string literals only in the list itself and in the labels keyed by it."""
    spelled = {str(p.relative_to(REPO)) for folder in ("helpers", "experiments", "bench")
               for p in (REPO / folder).rglob("*.py")
               if re.search(r"""["']dpo-only["']""", p.read_text(encoding="utf-8"))}
    assert spelled == {"helpers/infer/systems.py", "helpers/evaluate/tables.py"}


def test_trained_systems_follow_the_adapters_on_disk(runs):
    cfg = get_config("smoke", experiment="")
    assert systems.trained_systems(cfg) == ("base",)
    dpo = systems.adapter_dir(cfg, "dpo")
    dpo.mkdir(parents=True)
    (dpo / "adapters.safetensors").touch()
    with pytest.raises(FileNotFoundError, match="the DPO adapter sits on the SFT adapter"):
        systems.trained_systems(cfg)
    sft = systems.adapter_dir(cfg, "sft")
    sft.mkdir(parents=True)
    (sft / "adapters.safetensors").touch()
    (dpo / "adapters.safetensors").unlink()
    assert systems.trained_systems(cfg) == ("base", "sft")


def test_an_untrained_system_is_refused_before_the_base_is_loaded(runs, monkeypatch):
    def no_loading(cfg):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(systems, "load_base", no_loading)
    cfg = get_config("smoke", experiment="")
    with pytest.raises(ValueError, match=r"untrained adapter 'sft': this run has \['base'\]"):
        systems.load_system(cfg, "sft", switchable=True)
    with pytest.raises(ValueError, match=r"unknown system 'merged2'"):
        systems.load_system(cfg, "merged2")


def test_the_humanizer_loads_through_the_one_loader(smoke_run, monkeypatch):
    """Humanizer.load is trained_systems + load_system(switchable=True): the model it holds is
    the one load_system gives, switched to the requested system."""
    from helpers.core import config as config_module
    from helpers.infer.humanizer import Humanizer

    cfg, h, _, run_dir = smoke_run
    monkeypatch.setattr(config_module, "RUNS_ROOT", run_dir.parent)  # where the run was saved
    calls = []
    original = systems.load_system
    monkeypatch.setattr("helpers.infer.humanizer.load_system",
                        lambda *a, **k: calls.append((a[1:], k)) or original(*a, **k))
    again = Humanizer.load(cfg, adapter="sft")
    assert calls == [(("sft",), {"switchable": True})]
    assert (again.adapters, again.adapter) == (h.adapters, "sft")
    draft = ["The meeting on 4 May 2021 in Berlin was attended by 120 delegates."]
    before = h.adapter  # the session's humanizer is shared: give it back as it was
    try:
        assert again.rewrite(draft) == h.rewrite(draft, adapter="sft")
    finally:
        h.use(before)
