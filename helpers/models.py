"""Load a language model for MLX from a hub id, a local MLX/HF folder, or a GGUF file.

Hub ids are mapped to local copies when HUMANIZER_ASSETS points at a folder that has them (that is
how CI and offline machines work); otherwise mlx-lm downloads from the Hugging Face hub.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

# hub id -> path inside $HUMANIZER_ASSETS (README, "Models and data")
ASSET_PATHS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct":
        "models/SmolLM2-135M-Instruct-Q4_1/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sentence-transformers/all-MiniLM-L6-v2": "models/all-MiniLM-L6-v2",
}

# hub id -> the revision to read: RADAR's main branch holds its weights only as pytorch_model.bin
# (pickle, which is never loaded here); its pull request 2 holds the same weights as safetensors
HUB_REVISIONS = {"TrustSafeAI/RADAR-Vicuna-7B": "refs/pr/2"}

# GGUF tensor names -> mlx-lm Llama parameter names
_GGUF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}


class ModelNotAvailable(RuntimeError):
    pass


def assets_dir() -> Path | None:
    value = os.environ.get("HUMANIZER_ASSETS")
    return Path(value).expanduser().resolve() if value else None


def resolve(spec: str) -> str:
    """A local path for `spec` if there is one (the path itself or its HUMANIZER_ASSETS copy),
    else the hub id unchanged."""
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser())
    root = assets_dir()
    if root is not None:
        candidates = [root / ASSET_PATHS[spec]] if spec in ASSET_PATHS else []
        candidates.append(root / "models" / spec.split("/")[-1])
        for candidate in candidates:
            if candidate.exists():
                return str(candidate)
    return spec


def _hub_error(spec: str, err: Exception) -> ModelNotAvailable:
    root = assets_dir()
    if root is None:
        where = "HUMANIZER_ASSETS is not set"
    elif not root.is_dir():
        where = f"HUMANIZER_ASSETS={root} is not a folder"
    else:
        where = f"HUMANIZER_ASSETS={root} has no {ASSET_PATHS.get(spec, 'models/' + spec.split('/')[-1])}"
    fetch = f"make assets DEST={root}" if root else f"hf download {spec}"
    return ModelNotAvailable(
        f"Cannot load {spec!r}: it is not a local path, {where}, and the Hugging Face hub "
        f"could not be reached ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"On a connected machine run "
        f"`{fetch}` once (an offline pack: README, \"Offline classroom\").")


def load_model(spec: str, keep_quantized: bool = True, dtype: str = "float32",
               adapter_path: str | None = None, return_config: bool = False):
    """(model, tokenizer[, config]) for a hub id, a local MLX/HF folder or a .gguf file.

    keep_quantized=False dequantizes every quantized layer (the high-precision reference for the
    sensitivity analysis). `dtype` is the compute dtype of the float parameters: float32 on CPU.
    """
    import mlx_lm

    from .fast_cpu import install
    install()  # fast exp-based kernels on a Linux CPU (see fast_cpu)
    path = resolve(spec)
    if path.endswith(".gguf"):
        model, tokenizer, config = load_gguf(path, keep_quantized=keep_quantized)
        if adapter_path:
            from mlx_lm.utils import load_adapters
            model = load_adapters(model, adapter_path)
    else:
        try:
            model, tokenizer, config = mlx_lm.load(path, adapter_path=adapter_path,
                                                   return_config=True)
        except Exception as err:  # noqa: BLE001 - hub errors come in many types
            if Path(path).exists():
                raise
            raise _hub_error(spec, err) from err
        if not keep_quantized:
            model = dequantize_exactly(model)
            config = {k: v for k, v in config.items()
                      if k not in ("quantization", "quantization_config")}
    set_compute_dtype(model, dtype)
    model.eval()
    return (model, tokenizer, config) if return_config else (model, tokenizer)


def dequantize_exactly(model: nn.Module) -> nn.Module:
    """mlx-lm's dequantize_model, after widening float16 scales and biases to float32: dequantizing
    with float16 scales returns float16 weights, rounded away from what the quantized layer
    computes once its scales are float32 (up to 5e-3 in the logits of a small model)."""
    from mlx_lm.utils import dequantize_model

    wide = [(name, value.astype(mx.float32)) for name, value in tree_flatten(model.parameters())
            if name.endswith((".scales", ".biases")) and value.dtype in (mx.float16, mx.bfloat16)]
    if wide:
        model.load_weights(wide, strict=False)
    return dequantize_model(model)


def set_compute_dtype(model: nn.Module, dtype: str) -> None:
    """Cast float parameters (weights, norms, quantization scales/biases) to `dtype`."""
    target = getattr(mx, dtype)
    model.update(tree_map(lambda p: p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p,
                          model.parameters()))
    mx.eval(model.parameters())


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
    from mlx_lm.models import llama
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
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    from .config import RUNS_ROOT

    stat = Path(path).stat()
    cached = RUNS_ROOT / "cache" / f"tokenizer-{Path(path).stem}-{stat.st_size}-{stat.st_mtime_ns}"
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


MLX_TOOL = "mlx model export"


def save_mlx_model(model: nn.Module, tokenizer, config: dict, out_dir: str | Path,
                   overwrite: bool = False) -> Path:
    """Save in mlx-lm's own format (model.safetensors + config.json + tokenizer) so that
    `mlx_lm.load(out_dir)` and the mlx_lm command-line tools read it unchanged.
    Written to a temporary folder first, then moved in: an interrupted save leaves nothing
    half-done. `out_dir` may be new, empty, or an earlier save (with `overwrite`, whose listed
    files are replaced); anything else is refused (helpers/owned.py)."""
    from mlx_lm.utils import save_config, save_model

    from .owned import check_folder, install_folder, staging_folder

    out_dir = Path(out_dir)
    check_folder(MLX_TOOL, out_dir, overwrite)
    with staging_folder(out_dir) as tmp:
        save_model(tmp, model)
        save_config(dict(config), config_path=tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        return install_folder(MLX_TOOL, tmp, out_dir, overwrite)


def parameter_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def describe(model: nn.Module, config: dict) -> dict:
    """A short summary for notebooks: size, layers, quantization."""
    from mlx_lm.utils import compute_bits_per_weight, get_total_parameters

    q = config.get("quantization") or {}
    return {
        "layers": config.get("num_hidden_layers"),
        "hidden size": config.get("hidden_size"),
        "vocabulary": config.get("vocab_size"),
        "parameters (M)": round(get_total_parameters(model) / 1e6, 1),
        "quantized": bool(q),
        "bits (most layers)": q.get("bits"),
        "group size": q.get("group_size"),
        "bits per weight (stored, incl. scales)": round(compute_bits_per_weight(model), 2),
        "MB in memory": round(parameter_bytes(model) / 2**20, 1),
    }


def chat_prompt(tokenizer, user_text: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def read_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def base_model_spec(cfg) -> str:
    """The model later notebooks build on: notebook 03's mixed-precision model when it exists and
    was made from cfg.model (its config.json's "quantized_from"), else the preset's model."""
    config_file = cfg.input_path("quantized_model") / "config.json"
    if not config_file.exists():
        return cfg.model
    source = json.loads(config_file.read_text(encoding="utf-8")).get("quantized_from", cfg.model)
    return str(config_file.parent) if source == cfg.model else cfg.model
