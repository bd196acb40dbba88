import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from helpers.core.gguf import gguf_config, gguf_tokenizer, quant_params_of, unpermute_rope_rows
from helpers.core.models import (
    ASSET_PATHS,
    ModelNotAvailable,
    base_model_spec,
    load_model,
    resolve,
    save_mlx_model,
)

from conftest import WORKSHOP_MODEL, make_tiny_model, save_tiny_dir


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to attn_q / attn_k rows (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 4 * 3).reshape(8 * 4, 3)  # 4 heads of dim 8, 3 columns
    permuted = llama_cpp_permute(w, 4)
    assert not np.array_equal(permuted, w)
    restored = np.array(unpermute_rope_rows(mx.array(permuted), 4))
    np.testing.assert_array_equal(restored, w)


def test_quant_params_read_off_packed_shapes():
    weights = {"x.weight": mx.zeros((16, 64 * 4 // 32), dtype=mx.uint32),
               "x.scales": mx.zeros((16, 2)), "x.biases": mx.zeros((16, 2))}
    assert quant_params_of(weights, "x", in_features=64) == {"group_size": 32, "bits": 4}
    assert quant_params_of({"y.weight": mx.zeros((2, 2))}, "y", 2) is None


def test_resolve_maps_hub_ids_to_assets(monkeypatch, tmp_path):
    target = tmp_path / ASSET_PATHS[WORKSHOP_MODEL]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    monkeypatch.setenv("HUMANIZER_ASSETS", str(tmp_path))
    assert resolve(WORKSHOP_MODEL) == str(target)
    assert resolve("someone/unknown-model") == "someone/unknown-model"


def test_unavailable_model_error_names_id_and_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HUMANIZER_ASSETS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as err:
        load_model("someone/not-downloaded-model")
    assert "someone/not-downloaded-model" in str(err.value)
    assert "HUMANIZER_ASSETS" in str(err.value)


def test_gguf_config_rejects_other_architectures():
    with pytest.raises(ValueError, match="architecture 'qwen2'"):
        gguf_config({"general.architecture": "qwen2"}, {})


def test_save_mlx_model_roundtrip_with_mlx_lm(tmp_path, tokenizer):
    import mlx_lm

    model, config = make_tiny_model(seed=1)
    out = save_mlx_model(model, tokenizer, config, tmp_path / "tiny")
    reloaded, reloaded_tokenizer = mlx_lm.load(str(out))
    ids = mx.array([[1, 2, 3, 400, 5000]])
    assert mx.array_equal(model(ids), reloaded(ids))
    assert reloaded_tokenizer.encode("hello world") == tokenizer.encode("hello world")
    assert not (tmp_path / "tiny.tmp").exists()


def test_dequantized_load_of_a_saved_mixed_model_computes_what_its_quantized_layers_compute(tmp_path):
    """Notebook 03's saved model (float16 scales, 4 and 8 bits): the fp32 dequantized load that
    training uses must compute the quantized model's numbers, not float16-rounded ones."""
    from helpers.quant.apply import quantize_model

    model, config = make_tiny_model(seed=3)
    bits = {name: 8 if ".layers.1." in name else 4 for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.weight.shape[-1] % 32 == 0}
    model, config = quantize_model(model, config, bits, group_size=32)
    folder = save_tiny_dir(model, config, tmp_path / "mixed")
    quantized, _ = load_model(str(folder), keep_quantized=True)
    dequantized, _ = load_model(str(folder), keep_quantized=False)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in dequantized.named_modules())
    ids = mx.array([[1, 2, 3, 400, 5000, 7, 7, 123]])
    expected = quantized(ids)
    assert expected.dtype == mx.float32
    assert mx.abs(dequantized(ids) - expected).max().item() <= 1e-5 * mx.abs(expected).max().item()


def _perplexity(model, ids):
    logits = model(ids)[0, :-1]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return math.exp(-mx.take_along_axis(logprobs, ids[0, 1:, None], axis=-1).mean().item())


@pytest.mark.slow
def test_gguf_quantized_logits_match_dequantized_load(workshop_model):
    quantized, tokenizer, config = workshop_model
    dequantized, _ = load_model(WORKSHOP_MODEL, keep_quantized=False)
    ids = mx.array(tokenizer.encode("The children were playing in the park near their house."))[None]
    a, b = quantized(ids), dequantized(ids)
    assert a.dtype == mx.float32 and config["quantization"]["bits"] == 4
    assert mx.abs(a - b).max().item() < 1e-3
    # the model really works: simple English has low perplexity (it is ~46 without the unpermute)
    text = "The quick brown fox jumps over the lazy dog. It was a sunny day and the children were playing."
    assert _perplexity(dequantized, mx.array(tokenizer.encode(text))[None]) < 25


def test_later_notebooks_build_on_the_quantized_model_only_of_the_same_model(tmp_path, monkeypatch):
    from helpers.core import config as config_module
    from helpers.core.config import get_config

    monkeypatch.setattr(config_module, "RUNS_ROOT", tmp_path)
    cfg = get_config("smoke", model="org/model-a")
    assert base_model_spec(cfg) == "org/model-a"  # notebook 03 has not run
    saved = tmp_path / "smoke" / "quantized_model"
    saved.mkdir(parents=True)
    (saved / "config.json").write_text(json.dumps({"quantized_from": "org/model-a"}))
    assert base_model_spec(cfg) == str(saved)
    other = get_config("smoke", model="org/model-b")  # an override after 03 ran on model-a
    assert base_model_spec(other) == "org/model-b"


def test_gguf_tokenizer_is_built_once_and_read_back_identical(tmp_path, monkeypatch):
    from helpers.core import config as config_module

    monkeypatch.setattr(config_module, "RUNS_ROOT", tmp_path)
    path = resolve(WORKSHOP_MODEL)
    _, meta = mx.load(path, return_metadata=True)
    built = gguf_tokenizer(path, meta)
    saved = list((tmp_path / "cache").iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer.json").exists()
    cached = gguf_tokenizer(path, meta)
    assert cached is not built and list((tmp_path / "cache").iterdir()) == saved
    text = "Revenue rose 3.5% to $1,200 in 2021 (see https://x.org/a?b=1) — naïve 東京\n\tok."
    assert cached.encode(text) == built.encode(text) and cached.decode(cached.encode(text)) == text
    chat = [{"role": "system", "content": "Rewrite."}, {"role": "user", "content": text}]
    assert cached.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        built.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (cached.eos_token, len(cached)) == (built.eos_token, len(built))
