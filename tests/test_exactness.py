"""The exactness report on a tiny saved base with random adapters: it passes when every way of
building SFT+DPO computes the same logits, and fails when the training checkpoint differs."""
from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from helpers.core import config as config_module
from helpers.core.config import get_config
from helpers.core.precision import set_compute_dtype
from helpers.infer import exactness
from helpers.train.adapters import read_adapter_config, save_dpo_adapter, save_sft_adapter
from helpers.train.base import load_base
from helpers.train.lora import add_lora, lora_config
from helpers.train.merge import save_merged_adapter
from helpers.train.stacked import add_dpo_adapter, stacked_layers

from conftest import make_tiny_model, save_tiny_dir

TOKENS = mx.array([[5, 17, 300, 9000, 42, 7, 7, 123, 4000, 11]])


def saved_run(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "RUNS_ROOT", tmp_path / "runs")  # no notebook-03 base here
    base, config = make_tiny_model(seed=4)
    cfg = get_config("smoke", model=str(save_tiny_dir(base, config, tmp_path / "base")),
                     lora_layers=-1, experiment="")
    model, _ = make_tiny_model(seed=4)
    add_lora(model, lora_config(cfg, "sft"), seed=0)
    add_dpo_adapter(model, lora_config(cfg, "dpo"), seed=1)
    mx.random.seed(2)
    for _, layer in stacked_layers(model):
        layer.lora_b = 0.05 * mx.random.normal(layer.lora_b.shape)
        layer.dpo_b = 0.05 * mx.random.normal(layer.dpo_b.shape)
    adapters = tmp_path / "adapters"
    save_sft_adapter(model, adapters / "sft", lora_config(cfg, "sft"))
    save_dpo_adapter(model, adapters / "dpo", lora_config(cfg, "dpo"))
    save_dpo_adapter(model, tmp_path / "checkpoint", lora_config(cfg, "dpo"))
    save_merged_adapter(model, adapters / "merged", read_adapter_config(adapters / "sft"),
                             read_adapter_config(adapters / "dpo"))
    return cfg, adapters, model


def test_report_passes_when_all_builds_agree(tmp_path, monkeypatch):
    cfg, adapters, _ = saved_run(tmp_path, monkeypatch)
    table, passed = exactness.exactness_report(cfg, TOKENS, adapters, tmp_path / "checkpoint",
                                               adapters / "merged")
    assert passed, table
    assert list(table["model"]) == [a for a, _, _ in exactness.COMPARISONS]
    assert table["max |Δ logit| fp32"].iloc[0] == 0.0  # stacked = training graph, to the bit


def test_report_fails_on_a_checkpoint_that_is_not_the_adapter(tmp_path, monkeypatch):
    cfg, adapters, model = saved_run(tmp_path, monkeypatch)
    for _, layer in stacked_layers(model):
        layer.dpo_b = 2 * layer.dpo_b
    save_dpo_adapter(model, tmp_path / "checkpoint", lora_config(cfg, "dpo"))
    table, passed = exactness.exactness_report(cfg, TOKENS, adapters, tmp_path / "checkpoint",
                                               adapters / "merged")
    assert not passed and table["max |Δ logit| fp32"].iloc[0] > 1e-3


def test_each_fresh_base_is_its_own_model_on_the_files_weights(tmp_path, monkeypatch):
    cfg, _, _ = saved_run(tmp_path, monkeypatch)
    fresh = exactness.fresh_bases(cfg)
    first, second = fresh(), fresh()
    set_compute_dtype(first, "float64")
    add_lora(first, lora_config(cfg, "sft"), seed=0)
    names = lambda m: [n for n, _ in tree_flatten(m.parameters())]  # noqa: E731
    assert any("lora_a" in n for n in names(first)) and not any("lora" in n for n in names(second))
    assert second.model.embed_tokens.weight.dtype == mx.float32
    assert mx.array_equal(second(TOKENS), load_base(cfg)[0](TOKENS)).item()
