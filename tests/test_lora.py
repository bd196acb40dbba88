"""LoRA adapters: mlx-lm format, stacking, reference policy, exact merge, fusing, fake quantization."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import dequantize_model

from helpers.core.config import get_config
from helpers.core.models import base_model_spec
from helpers.train.adapters import (
    check_base,
    load_stacked,
    read_adapter_config,
    save_dpo_adapter,
    save_sft_adapter,
)
from helpers.train.base import base_fingerprint
from helpers.train.lora import add_lora, lora_config, lora_layers
from helpers.train.merge import fuse, save_merged_adapter
from helpers.train.stacked import add_dpo_adapter, set_adapters

from conftest import make_tiny_model, save_tiny_dir

TOKENS = mx.array([[5, 17, 300, 9000, 42, 7, 7, 123, 4000, 11]])


@pytest.fixture
def cfg():
    return get_config("smoke", lora_layers=-1, lora_rank=4, dpo_rank=2, lora_alpha=8.0,
                      dpo_alpha=6.0)


def randomize(model, names=("lora_b",), scale=0.05, seed=1):
    """Trained adapters have non-zero B; make them so (A is random already)."""
    mx.random.seed(seed)
    for _, layer in lora_layers(model):
        for name in names:
            setattr(layer, name, scale * mx.random.normal(getattr(layer, name).shape))
    mx.eval(model.parameters())


def sft_model(cfg):
    model, config = make_tiny_model()
    add_lora(model, lora_config(cfg, "sft"), seed=cfg.seed)
    randomize(model)
    return model, config


def stacked_model(cfg):
    model, config = sft_model(cfg)
    add_dpo_adapter(model, lora_config(cfg, "dpo"), seed=cfg.seed + 1)
    randomize(model, ("dpo_b",), seed=2)
    return model, config


def max_diff(a, b) -> float:
    return mx.abs(a - b).max().item()


def test_new_adapters_start_as_identity(cfg):
    base, _ = make_tiny_model()
    reference = base(TOKENS)
    model, _ = make_tiny_model()
    add_lora(model, lora_config(cfg), seed=0)
    assert max_diff(model(TOKENS), reference) == 0.0
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    assert max_diff(model(TOKENS), reference) == 0.0


def test_only_the_adapter_being_trained_is_trainable(cfg):
    model, _ = stacked_model(cfg)
    names = {k.rsplit(".", 1)[-1] for k, _ in tree_flatten(model.trainable_parameters())}
    assert names == {"dpo_a", "dpo_b"}


def test_sft_adapter_loads_with_mlx_lm(cfg, tmp_path):
    import mlx_lm

    base, config = make_tiny_model()
    save_tiny_dir(base, config, tmp_path / "base")
    model, _ = sft_model(cfg)
    save_sft_adapter(model, tmp_path / "sft", lora_config(cfg, "sft"))
    loaded, _ = mlx_lm.load(str(tmp_path / "base"), adapter_path=str(tmp_path / "sft"))
    assert max_diff(loaded(TOKENS), model(TOKENS)) <= 1e-6
    assert max_diff(loaded(TOKENS), base(TOKENS)) > 1e-3  # the adapter does something


def test_reference_policy_is_base_plus_sft(cfg, tmp_path):
    model, _ = sft_model(cfg)
    save_sft_adapter(model, tmp_path / "sft", lora_config(cfg, "sft"))
    plain_sft, _ = make_tiny_model()
    load_adapters(plain_sft, str(tmp_path / "sft"))  # mlx-lm's own LoRALinear
    add_dpo_adapter(model, lora_config(cfg, "dpo"))
    randomize(model, ("dpo_b",), seed=3)
    set_adapters(model, sft=True, dpo=False)
    assert max_diff(model(TOKENS), plain_sft(TOKENS)) == 0.0
    set_adapters(model, sft=True, dpo=True)
    assert max_diff(model(TOKENS), plain_sft(TOKENS)) > 1e-3
    base, _ = make_tiny_model()
    set_adapters(model, sft=False, dpo=False)
    assert max_diff(model(TOKENS), base(TOKENS)) == 0.0


def test_stacked_inference_equals_training_forward(cfg, tmp_path):
    trained, _ = stacked_model(cfg)
    save_sft_adapter(trained, tmp_path / "sft", lora_config(cfg, "sft"))
    save_dpo_adapter(trained, tmp_path / "dpo", lora_config(cfg, "dpo"))
    trained.train()  # the training-time forward (dropout is 0 in this config)
    expected = trained(TOKENS)
    inference, _ = make_tiny_model()
    load_stacked(inference, tmp_path / "sft", tmp_path / "dpo")
    assert max_diff(inference(TOKENS), expected) <= 1e-5
    for sft, dpo in [(False, True), (True, False), (False, False)]:
        set_adapters(inference, sft, dpo)
        set_adapters(trained, sft, dpo)
        assert max_diff(inference(TOKENS), trained(TOKENS)) <= 1e-5


def test_dpo_adapter_alone_is_a_standard_adapter(cfg, tmp_path):
    trained, _ = stacked_model(cfg)
    save_dpo_adapter(trained, tmp_path / "dpo", lora_config(cfg, "dpo"))
    dpo_only, _ = make_tiny_model()
    load_adapters(dpo_only, str(tmp_path / "dpo"))
    set_adapters(trained, sft=False, dpo=True)
    assert max_diff(dpo_only(TOKENS), trained(TOKENS)) <= 1e-5


def test_merged_adapter_equals_stacked_and_generates(cfg, tmp_path):
    import mlx_lm

    stacked, config = stacked_model(cfg)
    path = save_merged_adapter(stacked, tmp_path / "merged", lora_config(cfg, "sft"),
                                    lora_config(cfg, "dpo"))
    merged_config = read_adapter_config(path)["lora_parameters"]
    assert merged_config["rank"] == cfg.lora_rank + cfg.dpo_rank and merged_config["scale"] == 1.0
    base, _ = make_tiny_model()
    save_tiny_dir(base, config, tmp_path / "base")
    merged, tokenizer = mlx_lm.load(str(tmp_path / "base"), adapter_path=str(path))
    assert max_diff(merged(TOKENS), stacked(TOKENS)) <= 1e-5
    text = mlx_lm.generate(merged, tokenizer, "rewrite this text", max_tokens=4)
    assert isinstance(text, str)


def test_fused_weights_equal_stacked(cfg):
    model, _ = stacked_model(cfg)
    for sft, dpo in [(True, True), (True, False), (False, True)]:
        set_adapters(model, sft, dpo)
        expected = model(TOKENS)
        fused, _ = stacked_model(cfg)
        set_adapters(fused, sft, dpo)
        fuse(fused)
        assert not lora_layers(fused)
        assert max_diff(fused(TOKENS), expected) <= 1e-5


def test_adapters_on_different_linears_are_refused(cfg, tmp_path):
    model, _ = stacked_model(cfg)
    save_sft_adapter(model, tmp_path / "sft", lora_config(cfg, "sft"))
    other = get_config("smoke", lora_layers=-1, lora_targets=("self_attn.q_proj",))
    save_dpo_adapter(model, tmp_path / "dpo", lora_config(other, "dpo"))
    fresh, _ = make_tiny_model()
    with pytest.raises(ValueError, match="different linears"):
        load_stacked(fresh, tmp_path / "sft", tmp_path / "dpo")


def test_fake_quant_computes_what_the_quantized_layers_compute(cfg):
    """QLoRA on a CPU: LoRA over dequantize(W_q) in fp32 = LoRA over QuantizedLinear."""
    quantized, _ = make_tiny_model()
    nn.quantize(quantized, group_size=32, bits=4)
    fake, _ = make_tiny_model()
    nn.quantize(fake, group_size=32, bits=4)
    dequantize_model(fake)
    for model in (quantized, fake):
        add_lora(model, lora_config(cfg), seed=0)
        randomize(model)
    assert isinstance(lora_layers(quantized)[0][1].linear, nn.QuantizedLinear)
    assert isinstance(lora_layers(fake)[0][1].linear, nn.Linear)
    logits = quantized(TOKENS)
    # same numbers up to fp32 summation order
    assert max_diff(fake(TOKENS), logits) <= 1e-4 * mx.abs(logits).max().item()


def test_loaded_stacks_run_in_eval_mode(tmp_path):
    cfg = get_config("smoke", lora_layers=-1, lora_dropout=0.5)
    trained, _ = stacked_model(cfg)
    save_sft_adapter(trained, tmp_path / "sft", lora_config(cfg, "sft"))
    save_dpo_adapter(trained, tmp_path / "dpo", lora_config(cfg, "dpo"))
    loaded, _ = make_tiny_model()
    load_stacked(loaded, tmp_path / "sft", tmp_path / "dpo")
    assert not any(m.training for _, m in loaded.named_modules())  # no dropout at inference
    trained.eval()
    assert max_diff(loaded(TOKENS), trained(TOKENS)) <= 1e-5


def test_fusing_every_module_with_a_fuse_method_keeps_the_dpo_term(cfg):
    """mlx_lm.fuse calls .fuse() on every module that has one: the stacked layer must fold both
    adapters, not only the SFT one it inherits from LoRALinear."""
    model, _ = stacked_model(cfg)
    expected = model(TOKENS)
    model.update_modules(tree_unflatten([(name, m.fuse(dequantize=True))
                                         for name, m in model.named_modules() if hasattr(m, "fuse")]))
    assert not lora_layers(model)
    assert max_diff(model(TOKENS), expected) <= 1e-5
    sft_only, _ = sft_model(cfg)
    assert max_diff(model(TOKENS), sft_only(TOKENS)) > 1e-3  # the DPO term is really in


def test_add_lora_twice_starts_a_fresh_adapter(cfg):
    model, _ = sft_model(cfg)
    n_layers = len(lora_layers(model))
    add_lora(model, lora_config(cfg, "sft"), seed=cfg.seed)  # a rerun of the cell
    assert len(lora_layers(model)) == n_layers
    assert not any(isinstance(m.linear, LoRALinear) for _, m in lora_layers(model))
    base, _ = make_tiny_model()
    assert max_diff(model(TOKENS), base(TOKENS)) == 0.0  # B is zero again


def test_adapter_records_its_base_and_warns_on_another(cfg, tmp_path, monkeypatch):
    model, _ = sft_model(cfg)
    config = lora_config(cfg, "sft")
    # the base is notebook 03's model once a smoke run wrote it, else the preset's model
    assert config["base_model"] == base_model_spec(cfg)
    assert config["base_fingerprint"] == base_fingerprint(cfg)
    save_sft_adapter(model, tmp_path / "sft", config)
    assert check_base(tmp_path / "sft", cfg)
    other = get_config("smoke", model=str(save_tiny_dir(*make_tiny_model(seed=5), tmp_path / "other")))
    with pytest.warns(UserWarning, match="trained on .* loaded onto .*other"):
        assert not check_base(tmp_path / "sft", other)


def test_base_fingerprint_reads_the_model_files_not_the_tools_bookkeeping(tmp_path):
    """A tool's hidden manifest (it stores mtimes) beside the weights must not change which base
    the adapters were trained on; a changed weight file must."""
    folder = save_tiny_dir(*make_tiny_model(seed=3), tmp_path / "base")
    cfg = get_config("smoke", model=str(folder))
    before = base_fingerprint(cfg)
    (folder / ".outputs.json").write_text('{"files": {}}')
    assert base_fingerprint(cfg) == before
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert base_fingerprint(cfg) != before
