"""Gemma 3 from GGUF tensors, and Fast-DetectGPT scored by it (a tiny random gemma3_text model)."""
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from helpers.core import gemma_gguf
from helpers.core.config import get_config
from helpers.core.models import ModelNotAvailable
from helpers.evaluate.zero_shot import CachedFastDetectGPT, FastDetectGPT, other_family_detector

TINY = {"model_type": "gemma3_text", "hidden_size": 32, "num_hidden_layers": 2,
        "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "query_pre_attn_scalar": 16, "vocab_size": 50, "sliding_window": 8,
        "sliding_window_pattern": 2, "rms_norm_eps": 1e-6}


def tiny_gemma(seed=0):
    from mlx_lm.models import gemma3_text
    mx.random.seed(seed)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(TINY))
    model.sanitize({})  # no lm_head.weight: tied embeddings, as in the GGUF
    # random norm scales too, so that the 1 + w convention is tested
    model.load_weights([(k, mx.random.normal(v.shape) * 0.5) for k, v in
                        tree_flatten(model.parameters()) if k.endswith("norm.weight")], strict=False)
    mx.eval(model.parameters())
    return model.eval()


def as_gguf_tensors(model) -> dict:
    """The model's weights under llama.cpp's names, norm scales stored as 1 + w as it does."""
    to_gguf = {v: k for k, v in gemma_gguf._BLOCK_NAMES.items()}
    out = {}
    for name, value in tree_flatten(model.parameters()):
        value = np.asarray(value)
        if name.startswith("model.layers."):
            _, _, layer, *module, leaf = name.split(".")
            key, kind = f"blk.{layer}.{to_gguf['.'.join(module)]}.{leaf}", to_gguf[".".join(module)]
        else:
            kind = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}[
                name.rsplit(".", 1)[0]]
            key = f"{kind}.weight"
        out[key] = value + 1.0 if kind.endswith("norm") else value
    return out


def test_gguf_tensors_load_into_the_same_model():
    from mlx_lm.models import gemma3_text
    model = tiny_gemma()
    tensors = as_gguf_tensors(model)
    assert "blk.1.post_ffw_norm.weight" in tensors and "output.weight" not in tensors
    fields = {"general.architecture": "gemma3", **{f"gemma3.{k}": v for k, v in {
        "embedding_length": 32, "block_count": 2, "feed_forward_length": 64,
        "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 16,
        "attention.sliding_window": 8}.items()}}
    config = gemma_gguf.gemma_config(fields, vocab_size=50)
    assert {k: config[k] for k in ("hidden_size", "head_dim", "query_pre_attn_scalar")} == \
        {"hidden_size": 32, "head_dim": 16, "query_pre_attn_scalar": 16}
    loaded = gemma3_text.Model(gemma3_text.ModelArgs.from_dict({**config,
                                                                 "sliding_window_pattern": 2}))
    loaded.load_weights(list(loaded.sanitize(gemma_gguf.gemma_weights(tensors)).items()),
                        strict=True)
    tokens = mx.array([[2, 7, 9, 11, 3, 5]])
    np.testing.assert_allclose(np.asarray(loaded(tokens)), np.asarray(model(tokens)), atol=1e-5)
    with pytest.raises(ValueError, match="expected a gemma3 GGUF"):
        gemma_gguf.gemma_config({"general.architecture": "llama"}, 50)


class IdTokenizer:
    def encode(self, text):
        return [int(w) for w in text.split()]


def test_fast_detectgpt_on_gemma_is_the_reference_formula():
    model = tiny_gemma()
    text = "2 7 9 11 3 5 8"
    ids = IdTokenizer().encode(text)
    logits = np.asarray(model(mx.array([ids[:-1]])).astype(mx.float32))[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    observed = logp[np.arange(len(ids) - 1), ids[1:]]
    mean = (p * logp).sum(-1)
    var = (p * logp ** 2).sum(-1) - mean ** 2
    expected = (observed - mean).sum() / np.sqrt(var.sum())
    ours = FastDetectGPT(model, IdTokenizer(), batch_size=1).raw_scores([text])
    assert ours[0] == pytest.approx(expected, rel=1e-4)


def test_other_family_detector_is_not_run_plainly_without_its_model(monkeypatch, tmp_path):
    monkeypatch.setattr(gemma_gguf, "GEMMA_PACKAGE", "no_such_gemma_package")
    cfg = get_config("smoke", other_scorer_model="nobody/no-such-gemma")
    with pytest.raises(ModelNotAvailable) as err:
        other_family_detector(cfg, ["a", "b"], [0, 1])
    message = str(err.value)
    assert "\n" not in message and "nobody/no-such-gemma" in message
    assert "pip install no-such-gemma-package" in message
    off = get_config("smoke", other_scorer_model="")
    with pytest.raises(ModelNotAvailable, match="switched off"):
        other_family_detector(off, ["a", "b"], [0, 1])


def test_cached_scores_need_no_model_the_second_time(tmp_path):
    model, loads = tiny_gemma(), []

    def load():
        loads.append(1)
        return model, IdTokenizer()

    texts = ["2 7 9 11", "3 5 8 13 21", "4"]  # the last is one token: nothing to score
    cache = tmp_path / "scores.json"
    first = CachedFastDetectGPT(load, cache, "tiny|64", 64).raw_scores(texts)
    assert loads == [1] and np.isnan(first[2])
    direct = FastDetectGPT(model, IdTokenizer(), 64).raw_scores(texts[:2])
    np.testing.assert_allclose(first[:2], direct, rtol=1e-6)

    def no_load():
        raise AssertionError("the model was loaded although every score was cached")

    again = CachedFastDetectGPT(no_load, cache, "tiny|64", 64).raw_scores(texts[::-1])
    np.testing.assert_allclose(again, first[::-1])
    other = CachedFastDetectGPT(load, cache, "tiny|32", 32).raw_scores(texts[:1])
    assert loads == [1, 1] and other[0] == pytest.approx(first[0], rel=1e-6)  # new key: rescored
