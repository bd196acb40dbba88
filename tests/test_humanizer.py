"""The Humanizer object on the real smoke model with two small random adapters saved as a run."""
from __future__ import annotations

import pytest

from helpers.core import config as config_module
from helpers.core.config import get_config
from helpers.infer.humanizer import Humanizer, config_of_run
from helpers.infer.rewrite import rewrite
from helpers.infer.systems import use_system

DRAFTS = ["The meeting on 4 May 2021 in Berlin was attended by 120 delegates.",
          "Photosynthesis converts light energy into chemical energy stored in glucose."]


@pytest.fixture(scope="module")
def run(smoke_run):
    return smoke_run


def test_every_adapter_is_one_switch_away_and_matches_the_series_rewrite(run):
    cfg, h, model, _ = run
    assert h.adapters == ("base", "sft", "dpo-only", "sft+dpo") and h.adapter == "sft+dpo"
    outputs = {}
    for adapter in h.adapters:
        got = h.rewrite_detailed(DRAFTS, adapter=adapter)
        use_system(model, adapter)
        assert [r.text for r in got] == rewrite(model, h.tokenizer, DRAFTS, cfg, progress=False)
        assert all(0 < r.n_tokens <= 12 for r in got)
        outputs[adapter] = [r.text for r in got]
    assert len({tuple(v) for v in outputs.values()}) > 1  # the adapters really change the text


def test_unknown_adapter_lists_the_valid_ones(run):
    with pytest.raises(ValueError, match=r"'merged'.*\['base', 'sft', 'dpo-only', 'sft\+dpo'\]"):
        run[1].use("merged")


def test_stream_joins_to_the_start_of_the_rewrite(run):
    _, h, _, _ = run
    pieces = list(h.stream(DRAFTS[0], adapter="sft"))
    assert len(pieces) >= 1
    assert h.rewrite([DRAFTS[0]], adapter="sft")[0].startswith("".join(pieces).strip()[:20])


def test_token_cap_is_reported(run):
    _, h, _, _ = run
    capped = h.rewrite_detailed(DRAFTS, adapter="base", gen_max_tokens=3)
    assert all(r.hit_cap and r.n_tokens == 3 for r in capped)


def test_run_folder_gives_its_config(run):
    run_dir = run[3]
    assert config_of_run(run_dir).preset == "smoke"
    named = config_of_run(run_dir / "high-lr")
    assert (named.preset, named.experiment) == ("smoke", "high-lr")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        config_of_run(run_dir.parent.parent / "elsewhere")


def test_sft_only_run_switches_between_base_and_sft(run, tmp_path, monkeypatch):
    import shutil

    _, h, _, run_dir = run
    sft = run_dir / "adapters" / "sft"
    monkeypatch.setattr(config_module, "RUNS_ROOT", tmp_path)  # a run without the DPO adapter
    other = get_config("smoke", experiment="", gen_max_tokens=12, temperature=0.0)
    shutil.copytree(sft, other.path("adapters/sft"))
    only = Humanizer.load(other)
    assert only.adapters == ("base", "sft") and only.adapter == "sft"
    assert only.rewrite(DRAFTS, adapter="sft") == h.rewrite(DRAFTS, adapter="sft")
    assert only.rewrite(DRAFTS, adapter="base") == h.rewrite(DRAFTS, adapter="base")
