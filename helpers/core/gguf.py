"""A llama-architecture model from a GGUF file (llama.cpp's format), as an MLX model and a
Hugging Face tokenizer: tensor names mapped, RoPE rows un-permuted, Q4_0/Q4_1/Q8_0 kept
quantized.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from helpers.core import config
from helpers.core.precision import dequantize_exactly

# GGUF tensor names -> mlx-lm Llama parameter names
_GGUF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}


def _meta_int(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    return value.item() if hasattr(value, "item") else value


def gguf_config(meta: dict, weights: dict) -> dict:
    arch = str(meta.get("general.architecture"))
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (only 'llama'); convert the "
                         "model with mlx_lm.convert and load the folder instead")
    p = f"{arch}."
    n_embd = _meta_int(meta, p + "embedding_length")
    n_head = _meta_int(meta, p + "attention.head_count")
    embed = weights["token_embd.weight"]
    return {
        "model_type": "llama",
        "hidden_size": n_embd,
        "num_hidden_layers": _meta_int(meta, p + "block_count"),
        "intermediate_size": _meta_int(meta, p + "feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": _meta_int(meta, p + "attention.head_count_kv", n_head),
        "rms_norm_eps": float(_meta_int(meta, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": embed.shape[0],
        "rope_theta": float(_meta_int(meta, p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": _meta_int(meta, p + "context_length", 2048),
        "tie_word_embeddings": "output.weight" not in weights,
        "eos_token_id": _meta_int(meta, "tokenizer.ggml.eos_token_id"),
        "bos_token_id": _meta_int(meta, "tokenizer.ggml.bos_token_id"),
    }


def unpermute_rope_rows(w: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's row permutation of attn_q/attn_k (it interleaves each head's two RoPE
    halves). Works on weights, scales and biases alike: quantization groups run along columns."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_mlx_names(weights: dict, config: dict) -> dict:
    out = {}
    for name, value in weights.items():
        parts = name.split(".")
        if parts[0] == "blk":
            layer, kind, suffix = parts[1], parts[2], ".".join(parts[3:])
            if kind == "attn_q":
                value = unpermute_rope_rows(value, config["num_attention_heads"])
            elif kind == "attn_k":
                value = unpermute_rope_rows(value, config["num_key_value_heads"])
            if kind not in _GGUF_BLOCK_NAMES:
                raise ValueError(f"Unexpected GGUF tensor {name!r}")
            out[f"model.layers.{layer}.{_GGUF_BLOCK_NAMES[kind]}.{suffix}"] = value
        else:
            kind, suffix = parts[0], ".".join(parts[1:])
            if kind not in _GGUF_TOP_NAMES:
                raise ValueError(f"Unexpected GGUF tensor {name!r}")
            out[f"{_GGUF_TOP_NAMES[kind]}.{suffix}"] = value
    return out


def quant_params_of(weights: dict, prefix: str, in_features: int) -> dict | None:
    """Bits and group size of a quantized tensor, read off its packed shapes."""
    if f"{prefix}.scales" not in weights:
        return None
    packed = weights[f"{prefix}.weight"].shape[-1]
    groups = weights[f"{prefix}.scales"].shape[-1]
    return {"group_size": in_features // groups, "bits": packed * 32 // in_features}


def load_gguf(path: str, keep_quantized: bool = True):
    """Build an mlx-lm Llama from a GGUF file: weights, config and tokenizer all come from it."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.models import llama

    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    raw, meta = mx.load(path, return_metadata=True)
    # fp16 scales would round the dequantized weights to fp16: widen them first
    raw = {k: v.astype(mx.float32) if v.dtype in (mx.float16, mx.bfloat16) else v
           for k, v in raw.items()}
    config = gguf_config(meta, raw)
    weights = gguf_to_mlx_names(raw, config)
    model = llama.Model(llama.ModelArgs.from_dict(config))

    in_features = {name: module.weight.shape[-1] for name, module in model.named_modules()
                   if hasattr(module, "to_quantized")}
    per_layer = {name: q for name in in_features
                 if (q := quant_params_of(weights, name, in_features[name]))}
    if per_layer:
        first = next(iter(per_layer.values()))
        nn.quantize(model, group_size=first["group_size"], bits=first["bits"],
                    class_predicate=lambda name, _m: per_layer.get(name, False))
        config["quantization"] = {**first, **per_layer}
    model.load_weights(list(weights.items()), strict=True)
    if not keep_quantized:
        model = dequantize_exactly(model)
        config.pop("quantization", None)
    mx.eval(model.parameters())

    tokenizer = TokenizerWrapper(gguf_tokenizer(path, meta), eos_token_ids=[config["eos_token_id"]])
    return model, tokenizer, config


def gguf_tokenizer(path: str, meta: dict):
    """The Hugging Face tokenizer of a GGUF file. transformers rebuilds it from the GGUF vocabulary
    in seconds; it is saved once under runs/cache/ (keyed by the file's name, size and mtime) and
    read back from there in a fraction of a second, identical."""
    # deferred: transformers is slow to import, and only this path needs it
    from transformers import AutoTokenizer


    stat = Path(path).stat()
    cached = config.RUNS_ROOT / "cache" / f"tokenizer-{Path(path).stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    hf_tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    if meta.get("tokenizer.chat_template"):
        hf_tok.chat_template = str(meta["tokenizer.chat_template"])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=cached.name + ".tmp"))
    hf_tok.save_pretrained(str(tmp))
    try:
        tmp.rename(cached)  # atomic: a reader sees the whole folder or none
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_tok
