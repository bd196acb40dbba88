"""A standard Hugging Face hub cache, built from local files the way the hub client leaves it:

    $HF_HOME/hub/models--org--name/
        refs/main                      the revision (40 hex digits)
        snapshots/<revision>/<file>    a relative symlink to ../../blobs/<sha256>
        blobs/<sha256>                 the file's bytes

With HF_HUB_OFFLINE=1 and HF_HOME pointing here, `huggingface_hub`, transformers,
sentence-transformers, datasets and mlx-lm read these files as if they had been downloaded, so the
online code path is tested without a network.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def add_repo(hf_home: Path, repo_id: str, files: dict[str, Path | bytes],
             repo_type: str = "model", ref: str = "main") -> Path:
    """Put `files` ({name in the repository: a local file or bytes}) into the cache as one revision
    of `repo_id`, under the branch or pull-request ref `ref`; returns the snapshot folder."""
    repo = Path(hf_home) / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    contents = {name: src if isinstance(src, bytes) else Path(src).read_bytes()
                for name, src in sorted(files.items())}
    revision = hashlib.sha1(json.dumps(
        {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}).encode()
    ).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(revision)
    return snapshot


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file below `folder`, by its path relative to it (a model folder as the hub serves it)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def gguf_as_hub_folder(gguf: Path, out: Path) -> Path:
    """A GGUF Llama written out as the hub serves a transformers model: bfloat16 model.safetensors,
    config.json, generation_config.json and the tokenizer files with the chat template. The weights
    are the GGUF's dequantized, so the numbers differ slightly from the hub's own bf16 release."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from helpers.core.gguf import load_gguf

    model, tokenizer, config = load_gguf(str(gguf), keep_quantized=False)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    hub_config = {
        "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "bfloat16", "pad_token_id": config["eos_token_id"],
        "head_dim": config["hidden_size"] // config["num_attention_heads"],
        **{k: v for k, v in config.items() if k != "quantization"},
    }
    (out / "config.json").write_text(json.dumps(hub_config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}))
    tokenizer.save_pretrained(str(out))
    return out
