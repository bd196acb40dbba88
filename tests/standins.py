"""Tiny random stand-ins for hub models and data this machine cannot download, written in the
file layout the hub serves, for tests that load them through a Hugging Face cache (hub_cache.py).

- `byte_tokenizer`: a byte-level BPE without merges (every text tokenizes, decode round-trips),
  with a ChatML chat template, for causal LMs.
- `llama_folder`: a random Llama as transformers saves it (bfloat16 model.safetensors, config.json
  naming LlamaForCausalLM, tokenizer files).
- `roberta_classifier_folder`: a random RobertaForSequenceClassification as RADAR's repository
  holds it (config.json, vocab.json, merges.txt, tokenizer.json, no tokenizer_config.json; the
  weights as model.safetensors, the form of the safetensors copy in its refs/pr/2).
- `parquet_dataset_files`: split files as `datasets.push_to_hub` writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, "<mask>" last, as in roberta-large


def byte_level_bpe(specials_first=(), specials_last=(), extra_tokens=()):
    """(tokenizers.Tokenizer, vocab, merges): the 256 byte symbols between the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    names = list(specials_first) + sorted(alphabet) + list(extra_tokens) + list(specials_last)
    vocab = {name: i for i, name in enumerate(names)}
    backend = Tokenizer(models.BPE(vocab, [], unk_token=specials_first[0] if specials_first else None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(specials_first) + list(specials_last))
    return backend, vocab, []


def byte_tokenizer(extra_tokens=()):
    """A causal LM's tokenizer: byte-level, `</s>` as EOS, the ChatML template."""
    from transformers import PreTrainedTokenizerFast

    backend, _, _ = byte_level_bpe(LLAMA_SPECIALS, extra_tokens=extra_tokens)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHATML
    return tokenizer


def llama_folder(folder: Path, config: dict, tokenizer, seed: int = 0) -> Path:
    """A random mlx-lm Llama with `config`, saved as a transformers checkpoint: HF parameter
    names (mlx-lm's Llama uses the same), bfloat16, config.json with the HF fields; the
    vocabulary is the tokenizer's."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = {**config, "vocab_size": len(tokenizer)}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    hub_config = {"architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
                  "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
                  "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                  **config}
    (folder / "config.json").write_text(json.dumps(hub_config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}))
    tokenizer.save_pretrained(str(folder))
    return folder


def roberta_classifier_folder(folder: Path, seed: int = 0) -> Path:
    """A random 2-label RoBERTa classifier in RADAR's layout. Its config.json, like RADAR's,
    names no labels (transformers' default: 2 labels, LABEL_0 and LABEL_1)."""
    import torch
    from tokenizers import processors
    from transformers import RobertaConfig, RobertaForSequenceClassification

    backend, vocab, merges = byte_level_bpe(ROBERTA_SPECIALS, ("<mask>",))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1)
    RobertaForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    saved = json.loads((folder / "config.json").read_text())
    unnamed = {k: v for k, v in saved.items() if k not in ("id2label", "label2id")}
    (folder / "config.json").write_text(json.dumps(unnamed, indent=2))
    backend.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def parquet_dataset_files(folder: Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """{path in the repository: file} for each split, as `push_to_hub` names them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for split, rows in splits.items():
        name = f"data/{split}-00000-of-00001.parquet"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        files[name] = path
    return files
