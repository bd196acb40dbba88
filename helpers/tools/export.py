"""Export the humanizer (base + adapters, fused) for the tools people already run: a GGUF file for
llama.cpp, Ollama and LM Studio (with an Ollama Modelfile beside it), or an mlx-lm folder.

    python -m helpers.tools.export --format gguf [--preset workshop] [--adapter sft+dpo] [--outtype f16]
    python -m helpers.tools.export --format mlx  [--preset workshop] [--adapter sft+dpo] [--out PATH]

The adapters are folded into fp32 weights first (lora.fuse), so the exported model is a plain Llama.
The GGUF file is laid out as llama.cpp's own converter (convert_hf_to_gguf.py) lays out a Llama:
`llama.*` hyperparameters, `tokenizer.ggml.*` vocabulary, merges, token types and special ids, the
chat template, tensors under llama.cpp's names with the rows of attn_q / attn_k permuted the way
llama.cpp's RoPE expects (the inverse of models.unpermute_rope_rows). The tokenizer keys are copied
from the source GGUF when the preset's model is one (the most faithful route: it is the file the
base came from); otherwise they are built from the Hugging Face tokenizer (tokenizer.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, SpecialVocab, TokenType, quants
from mlx.utils import tree_flatten
from tokenizers import Tokenizer

from helpers.core import fast_cpu
from helpers.core.config import get_config
from helpers.core.gguf import _GGUF_BLOCK_NAMES, _GGUF_TOP_NAMES
from helpers.core.io import atomic_output, atomic_write_text
from helpers.core.models import MLX_TOOL, ModelNotAvailable, resolve, save_mlx_model
from helpers.core.owned import (
    EXIT_MISSING,
    UserError,
    check_folder,
    check_targets,
    manifest_of,
    record,
)
from helpers.infer import systems
from helpers.infer.humanizer import Humanizer
from helpers.train.merge import fuse

OUTTYPES = ("f32", "f16", "q8_0")
# the system prompt SmolLM2's chat template falls back to when a chat has none
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_MLX_BLOCK_NAMES = {v: k for k, v in _GGUF_BLOCK_NAMES.items()}
_MLX_TOP_NAMES = {v: k for k, v in _GGUF_TOP_NAMES.items()}


# ---------------------------------------------------------------- the fused model

def fused_humanizer(cfg, adapter: str = "sft+dpo"):
    """(model, tokenizer, config): the run's base with the chosen adapters folded into fp32 weights."""
    if adapter not in systems.SYSTEMS:
        raise ValueError(f"unknown adapter {adapter!r}; choose one of {systems.SYSTEMS}")
    for name in systems.needed_adapters(adapter):
        if not (systems.adapter_dir(cfg, name) / "adapters.safetensors").exists():
            raise FileNotFoundError(f"{systems.adapter_dir(cfg, name)}: no {name.upper()} adapter "
                                    f"for preset {cfg.preset!r}; train it (notebook 04/05) or "
                                    "export --adapter base")
    # fuse() needs fp32 weights; dequantize(W_q) is exactly what the quantized base computes with
    loaded = Humanizer.load(dataclasses.replace(cfg, fake_quant=True), adapter)
    fuse(loaded.model)
    return loaded.model, loaded.tokenizer, model_config(loaded.model, loaded.tokenizer)


def model_config(model: nn.Module, tokenizer) -> dict:
    """mlx-lm's config.json for a Llama built from `model.args`, with the tokenizer's special ids."""
    config = {k: v for k, v in dataclasses.asdict(model.args).items() if v is not None}
    config["bos_token_id"] = tokenizer.bos_token_id
    config["eos_token_id"] = tokenizer.eos_token_id
    return config


# ---------------------------------------------------------------- tensors

def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for attn_q / attn_k: each head's two RoPE halves interleaved
    (what convert_hf_to_gguf.py does; models.unpermute_rope_rows undoes it)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_supported(config: dict) -> None:
    if config.get("model_type") != "llama":
        raise ValueError(f"model_type {config.get('model_type')!r}: GGUF export supports 'llama' only")
    for key in ("rope_scaling", "attention_bias", "mlp_bias"):
        if config.get(key):
            raise ValueError(f"config field {key}={config[key]!r} is not supported by this GGUF "
                             "export; convert with llama.cpp's convert_hf_to_gguf.py instead")


def gguf_tensors(model: nn.Module, config: dict) -> dict[str, np.ndarray]:
    """{llama.cpp tensor name: fp32 array} in llama.cpp's order: embeddings, blocks, output."""
    _check_supported(config)
    weights = dict(tree_flatten(model.parameters()))
    quantized = sorted(k for k in weights if k.endswith(".scales"))
    if quantized:
        raise ValueError(f"{quantized[0]}: the model is quantized; export a fp32 model "
                         "(load it with keep_quantized=False or cfg.fake_quant=True)")
    out = {}
    for name, value in weights.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings", True):
            continue  # tied: llama.cpp reuses token_embd when output.weight is absent
        array = np.array(value.astype(mx.float32))
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight)", name)
        if match:
            layer, module, suffix = match.groups()
            if module not in _MLX_BLOCK_NAMES:
                raise ValueError(f"parameter {name!r} has no llama.cpp name")
            kind = _MLX_BLOCK_NAMES[module]
            if kind == "attn_q":
                array = permute_rope_rows(array, config["num_attention_heads"])
            elif kind == "attn_k":
                array = permute_rope_rows(array, config["num_key_value_heads"])
            out[f"blk.{layer}.{kind}.{suffix}"] = array
        else:
            module, _, suffix = name.rpartition(".")
            if module not in _MLX_TOP_NAMES:
                raise ValueError(f"parameter {name!r} has no llama.cpp name")
            out[f"{_MLX_TOP_NAMES[module]}.{suffix}"] = array
    order = lambda n: (n != "token_embd.weight", n.startswith("output"),  # noqa: E731
                       int(n.split(".")[1]) if n.startswith("blk.") else 0, n)
    return {n: out[n] for n in sorted(out, key=order)}


def encode_tensor(array: np.ndarray, outtype: str):
    """(data, GGML type) as llama.cpp's converter stores it: 1-D tensors (norms) stay F32;
    matrices become F16 or Q8_0 (F16 where a row does not split into Q8_0's 32-value blocks)."""
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose one of {OUTTYPES}")
    if array.ndim == 1 or outtype == "f32":
        return array.astype(np.float32), GGMLQuantizationType.F32
    if outtype == "q8_0" and array.shape[-1] % 32 == 0:
        return quants.quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return array.astype(np.float16), GGMLQuantizationType.F16


# ---------------------------------------------------------------- tokenizer and chat template

def tokenizer_fields_from_gguf(path: str | Path) -> list[tuple]:
    """Every tokenizer.* key of a GGUF file as (key, value, type, array item type)."""
    fields = []
    for key, field in GGUFReader(str(path)).fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            fields.append((key, field.contents(), field.types[0], sub_type))
    if not any(key == "tokenizer.ggml.tokens" for key, *_ in fields):
        raise ValueError(f"{path}: no tokenizer.ggml.tokens key; it carries no tokenizer")
    return fields


def _llama_cpp_pre(pre_tokenizer: dict | None, where: Path) -> str:
    """llama.cpp's name for the pre-tokenizer (it picks its regex by this name). Only the two
    byte-level schemes SmolLM-style tokenizers use are recognised; anything else is an error rather
    than a silently different split."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer] if pre_tokenizer else [])
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    raise ValueError(f"{where}: pre_tokenizer {json.dumps(pre_tokenizer)[:200]} has no known "
                     "llama.cpp name; convert with llama.cpp's convert_hf_to_gguf.py instead")


def tokenizer_fields_from_hf(folder: str | Path, vocab_size: int) -> list[tuple]:
    """tokenizer.* keys built from a Hugging Face tokenizer folder (tokenizer.json and
    tokenizer_config.json), as convert_hf_to_gguf.py builds them for a BPE (gpt2-style) vocabulary."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the GGUF export needs a fast (tokenizer.json) "
                                "tokenizer or a source GGUF file")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE":
        raise ValueError(f"{path}: model.type {spec.get('model', {}).get('type')!r}; only BPE "
                         "tokenizers are exported")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL if i not in added else
                         TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
    special = SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    S, A, U32 = GGUFValueType.STRING, GGUFValueType.ARRAY, GGUFValueType.UINT32
    fields = [("tokenizer.ggml.model", "gpt2", S, None),
              ("tokenizer.ggml.pre", _llama_cpp_pre(spec.get("pre_tokenizer"), path), S, None),
              ("tokenizer.ggml.tokens", tokens, A, S),
              ("tokenizer.ggml.token_type", [int(t) for t in types], A, GGUFValueType.INT32),
              ("tokenizer.ggml.merges", list(special.merges), A, S)]
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
             "pad": "padding_token_id"}
    fields += [(f"tokenizer.ggml.{names[k]}", int(v), U32, None)
               for k, v in special.special_token_ids.items() if k in names]
    fields += [(f"tokenizer.ggml.add_{k}_token", v, GGUFValueType.BOOL, None)
               for k, v in _adds_special_tokens(path, special.special_token_ids).items()]
    if isinstance(special.chat_template, str):
        fields.append(("tokenizer.chat_template", special.chat_template, S, None))
    return fields


def _adds_special_tokens(path: Path, ids: dict) -> dict:
    """Whether encoding puts BOS in front / EOS at the end, found by encoding a word both ways
    (tokenizer_config.json often leaves it unsaid; llama.cpp needs it said)."""
    tokenizer = Tokenizer.from_file(str(path))
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    return {"bos": len(full) > len(plain) and full[0] == ids.get("bos"),
            "eos": len(full) > len(plain) and full[-1] == ids.get("eos")}


def with_default_system(template: str, system_prompt: str) -> str:
    """The chat template with the humanizer's system prompt as the fallback for chats that bring
    none (SmolLM2's template inserts its own assistant persona there): tools that send no system
    message then prompt the model the way its adapters were trained."""
    literal = system_prompt.replace("\\", "\\\\").replace("'", "\\'")
    return template.replace(SMOLLM_DEFAULT_SYSTEM, literal)


def set_field(fields: list[tuple], key: str, value, vtype, sub_type=None) -> list[tuple]:
    return [f for f in fields if f[0] != key] + [(key, value, vtype, sub_type)]


# ---------------------------------------------------------------- writing

def write_gguf(path: str | Path, model: nn.Module, config: dict, tokenizer_fields: list[tuple],
               outtype: str = "f32", name: str = "humanizer", sampling: dict | None = None) -> Path:
    """A GGUF file llama.cpp loads: metadata, tokenizer keys, tensors (written to a temporary file
    in the same folder, then renamed). `sampling` = {"temp", "top_p", "penalty_repeat",
    "penalty_last_n"}: defaults llama.cpp reads from general.sampling.*."""
    tensors = gguf_tensors(model, config)
    path = Path(path)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    with atomic_output(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        try:
            writer.add_type("model")
            writer.add_name(name)
            writer.add_context_length(config.get("max_position_embeddings", 2048))
            writer.add_embedding_length(config["hidden_size"])
            writer.add_block_count(config["num_hidden_layers"])
            writer.add_feed_forward_length(config["intermediate_size"])
            writer.add_rope_dimension_count(head_dim)
            writer.add_head_count(config["num_attention_heads"])
            writer.add_head_count_kv(config.get("num_key_value_heads",
                                                config["num_attention_heads"]))
            writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
            writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
            writer.add_vocab_size(config["vocab_size"])
            writer.add_file_type(file_type)
            if outtype == "q8_0":
                writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for key, value in (sampling or {}).items():
                getattr(writer, f"add_sampling_{key}")(value)
            for key, value, vtype, sub_type in tokenizer_fields:
                writer.add_key_value(key, value, vtype, sub_type)
            for tensor_name, array in tensors.items():
                data, qtype = encode_tensor(array, outtype)
                writer.add_tensor(tensor_name, data, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def ollama_modelfile(gguf_name: str, cfg) -> str:
    """An Ollama Modelfile: the ChatML turns of SmolLM2's chat template, the humanizer's system
    prompt and the preset's decoding (Ollama's repeat_penalty is the same rule as mlx-lm's; the
    DRY penalty has no Modelfile parameter, docs/USAGE.md says how to give it to llama.cpp)."""
    template = (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- if .Messages }}{{- range .Messages }}{{- if ne .Role \"system\" }}"
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{- end }}"
        "{{- else if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""',
             f'SYSTEM """{cfg.system_prompt}"""', 'PARAMETER stop "<|im_end|>"',
             f"PARAMETER temperature {cfg.temperature}", f"PARAMETER top_p {cfg.top_p}",
             f"PARAMETER repeat_penalty {cfg.repetition_penalty}",
             f"PARAMETER repeat_last_n {cfg.repetition_context}",
             f"PARAMETER num_predict {cfg.gen_max_tokens}"]
    return "\n".join(lines) + "\n"


def tokenizer_fields_for(cfg, tokenizer, vocab_size: int, source: str = "auto") -> list[tuple]:
    """The tokenizer keys: from the preset's model file when it is a GGUF ("gguf"), else from the
    Hugging Face tokenizer the base was loaded with ("hf")."""
    model_file = resolve(cfg.model)
    if source == "auto":
        source = "gguf" if model_file.endswith(".gguf") else "hf"
    if source == "gguf":
        if not model_file.endswith(".gguf"):
            raise ValueError(f"{cfg.model!r} is not a GGUF file: use --tokenizer-from hf")
        return tokenizer_fields_from_gguf(model_file)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return tokenizer_fields_from_hf(folder, vocab_size)


def humanizer_gguf_fields(cfg, tokenizer, vocab_size: int, source: str = "auto") -> list[tuple]:
    """The tokenizer keys with the chat template falling back to the training system prompt."""
    fields = tokenizer_fields_for(cfg, tokenizer, vocab_size, source)
    template = next((v for k, v, *_ in fields if k == "tokenizer.chat_template"),
                    tokenizer.chat_template)
    if not template:
        raise ValueError("the tokenizer has no chat template; the GGUF would not know the chat format")
    return set_field(fields, "tokenizer.chat_template",
                     with_default_system(template, cfg.system_prompt), GGUFValueType.STRING)


GGUF_TOOL = "helpers.tools.export"


def gguf_targets(out: Path) -> list[Path]:
    return [out, out.parent / "Modelfile"]


def check_gguf_out(out: Path, overwrite: bool) -> None:
    """Before any work: the .gguf path is a file name, and neither it nor the Modelfile beside it
    is anything but this command's own earlier export (replaced only with overwrite)."""
    if out.is_dir() and not out.is_symlink():
        raise UserError(f"{out}: is a folder; give the .gguf file's name "
                        f"(--out {out / 'humanizer.gguf'})")
    check_targets(GGUF_TOOL, gguf_targets(out), manifest_of(out), overwrite)


def write_humanizer_gguf(cfg, model, config: dict, fields: list[tuple], out: str | Path,
                         outtype: str = "f16", overwrite: bool = False) -> Path:
    """The .gguf file (with cfg's decoding as llama.cpp's sampling defaults) and its Modelfile,
    each written atomically, then the manifest that marks both as this command's own."""
    out = Path(out)
    check_gguf_out(out, overwrite)
    sampling = {"temp": cfg.temperature, "top_p": cfg.top_p,
                "penalty_repeat": cfg.repetition_penalty, "penalty_last_n": cfg.repetition_context}
    write_gguf(out, model, config, fields, outtype, name=f"{out.stem} ({cfg.preset})",
               sampling=sampling)
    atomic_write_text(out.parent / "Modelfile", ollama_modelfile(out.name, cfg))
    record(GGUF_TOOL, gguf_targets(out), manifest_of(out))
    return out


def gguf_path(cfg, adapter: str, outtype: str, out: str | Path | None) -> Path:
    stem = f"humanizer-{adapter.replace('+', '-')}-{outtype}"
    return Path(out) if out else cfg.path("export") / stem / f"{stem}.gguf"


def mlx_path(cfg, adapter: str, out: str | Path | None) -> Path:
    return Path(out) if out else cfg.path("export") / f"humanizer-{adapter.replace('+', '-')}-mlx"


def export_gguf(cfg, adapter: str = "sft+dpo", out: str | Path | None = None, outtype: str = "f16",
                tokenizer_from: str = "auto", overwrite: bool = False) -> Path:
    """runs/<preset>/export/humanizer-<adapter>-<outtype>/ with the .gguf file and a Modelfile."""
    out = gguf_path(cfg, adapter, outtype, out)
    check_gguf_out(out, overwrite)  # refuse before the minutes of fusing and encoding
    model, tokenizer, config = fused_humanizer(cfg, adapter)
    fields = humanizer_gguf_fields(cfg, tokenizer, config["vocab_size"], tokenizer_from)
    return write_humanizer_gguf(cfg, model, config, fields, out, outtype, overwrite)


def export_mlx(cfg, adapter: str = "sft+dpo", out: str | Path | None = None,
               overwrite: bool = False) -> Path:
    """runs/<preset>/export/humanizer-<adapter>-mlx/: model.safetensors, config.json, tokenizer."""
    out = mlx_path(cfg, adapter, out)
    check_folder(MLX_TOOL, out, overwrite)
    model, tokenizer, config = fused_humanizer(cfg, adapter)
    if tokenizer.chat_template:
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, cfg.system_prompt)
    return save_mlx_model(model, tokenizer, config, out, overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.export",
                                     description=__doc__.splitlines()[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=("gguf", "mlx"))
    parser.add_argument("--preset", default=None)
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--adapter", default="sft+dpo", choices=systems.SYSTEMS)
    parser.add_argument("--outtype", default="f16", choices=OUTTYPES, help="GGUF weight type")
    parser.add_argument("--tokenizer-from", default="auto", choices=("auto", "gguf", "hf"))
    parser.add_argument("--out", help="the .gguf file (gguf) or the folder (mlx)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this command's own earlier export at --out (only the files "
                             "its manifest lists, and only if unchanged since)")
    return parser


EXIT_CODES = """Exit status:
  0  exported
  2  usage error: an unknown preset, or a folder given as the .gguf file
  3  the model or an adapter of the preset is not there (train it: notebooks 04-05)
  4  refused: --out holds files this command did not write, or its own earlier export without
     --overwrite (nothing is deleted or replaced)
"""


def export(args) -> Path:
    try:
        cfg = get_config(args.preset, experiment=args.experiment)
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        if args.format == "gguf":
            return export_gguf(cfg, args.adapter, args.out, args.outtype, args.tokenizer_from,
                               args.overwrite)
        return export_mlx(cfg, args.adapter, args.out, args.overwrite)
    except (FileNotFoundError, ModelNotAvailable) as err:
        raise UserError(str(err), EXIT_MISSING) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fast_cpu.install()  # faster attention and SwiGLU on a Linux CPU: see helpers/core/fast_cpu.py
    try:
        path = export(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.format == "gguf":
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and {path.parent / 'Modelfile'}")
    else:
        print(f"wrote {path}/ (load it with mlx_lm.load({str(path)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
