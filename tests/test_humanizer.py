"""The Humanizer object on the real smoke model with two small random adapters saved as a run."""
from __future__ import annotations

import mlx.core as mx
import pytest

from helpers import config as config_module
from helpers import lora
from helpers.config import get_config
from helpers.generate import rewrite, use_system
from helpers.humanizer import Humanizer, config_of_run

DRAFTS = ["The meeting on 4 May 2021 in Berlin was attended by 120 delegates.",
          "Photosynthesis converts light energy into chemical energy stored in glucose."]


def randomize_b(model, names, seed):
    mx.random.seed(seed)
    for _, layer in lora.lora_layers(model):
        for name in names:
            setattr(layer, name, 0.02 * mx.random.normal(getattr(layer, name).shape))
    mx.eval(model.parameters())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """runs/smoke/ in a temporary folder, holding an SFT and a DPO adapter with non-zero B."""
    root = tmp_path_factory.mktemp("runs")
    saved, config_module.RUNS_ROOT = config_module.RUNS_ROOT, root
    cfg = get_config("smoke", experiment="", gen_max_tokens=12, temperature=0.0)
    model, _ = lora.load_base(cfg)
    lora.add_lora(model, lora.lora_config(cfg, "sft"), seed=0)
    randomize_b(model, ("lora_b",), seed=1)
    lora.save_sft_adapter(model, cfg.path("adapters/sft"), lora.lora_config(cfg, "sft"))
    lora.add_dpo_adapter(model, lora.lora_config(cfg, "dpo"), seed=2)
    randomize_b(model, ("dpo_b",), seed=3)
    lora.save_dpo_adapter(model, cfg.path("adapters/dpo"), lora.lora_config(cfg, "dpo"))
    yield cfg, Humanizer.load(cfg), model
    config_module.RUNS_ROOT = saved


def test_every_adapter_is_one_switch_away_and_matches_the_series_rewrite(run):
    cfg, h, model = run
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
    _, h, _ = run
    pieces = list(h.stream(DRAFTS[0], adapter="sft"))
    assert len(pieces) >= 1
    assert h.rewrite([DRAFTS[0]], adapter="sft")[0].startswith("".join(pieces).strip()[:20])


def test_token_cap_is_reported(run):
    _, h, _ = run
    capped = h.rewrite_detailed(DRAFTS, adapter="base", gen_max_tokens=3)
    assert all(r.hit_cap and r.n_tokens == 3 for r in capped)


def test_run_folder_gives_its_config(run):
    cfg = run[0]
    assert config_of_run(cfg.runs_dir).preset == "smoke"
    named = config_of_run(cfg.runs_dir / "high-lr")
    assert (named.preset, named.experiment) == ("smoke", "high-lr")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        config_of_run(cfg.runs_dir.parent.parent / "elsewhere")


def test_sft_only_run_switches_between_base_and_sft(run, tmp_path, monkeypatch):
    import shutil

    cfg, h, _ = run
    sft = cfg.runs_dir / "adapters" / "sft"
    monkeypatch.setattr(config_module, "RUNS_ROOT", tmp_path)  # a run without the DPO adapter
    other = get_config("smoke", experiment="", gen_max_tokens=12, temperature=0.0)
    shutil.copytree(sft, other.path("adapters/sft"))
    only = Humanizer.load(other)
    assert only.adapters == ("base", "sft") and only.adapter == "sft"
    assert only.rewrite(DRAFTS, adapter="sft") == h.rewrite(DRAFTS, adapter="sft")
    assert only.rewrite(DRAFTS, adapter="base") == h.rewrite(DRAFTS, adapter="base")
