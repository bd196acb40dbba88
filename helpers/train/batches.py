"""From chat rows to token batches: the answer's offset per row (mlx-lm's
ChatDataset layout), padding to a multiple of PAD_TO, a seeded batch order.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.datasets import ChatDataset

from helpers.core.prompt import chat_messages
from helpers.data.prepare import sft_examples

PAD_TO = 32  # pad batches to a multiple of this: fewer distinct shapes to compile


def chat_tokens(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """(tokens of the whole chat, index of the first answer token), via mlx-lm's ChatDataset."""
    return ChatDataset([], tokenizer, mask_prompt=True).process({"messages": messages})


def truncate(item: tuple[list[int], int], max_seq_len: int) -> tuple[list[int], int] | None:
    """Cut to max_seq_len tokens; None when no answer token would be left."""
    tokens, offset = item
    tokens = tokens[:max_seq_len]
    return (tokens, offset) if offset < len(tokens) else None


def sft_dataset(rows: list[dict], tokenizer, cfg) -> list[tuple[list[int], int]]:
    items = [truncate(chat_tokens(tokenizer, ex["messages"]), cfg.max_seq_len)
             for ex in sft_examples(rows, cfg.system_prompt)]
    kept = [it for it in items if it is not None]
    if len(kept) < len(items):
        print(f"dropped {len(items) - len(kept)} examples whose prompt fills max_seq_len")
    return kept


def dpo_dataset(pairs: list[dict], tokenizer, cfg) -> list[dict]:
    """Each pair as chosen and rejected chats that share the prompt."""
    out = []
    for p in pairs:
        chosen = truncate(chat_tokens(tokenizer, chat_messages(p["prompt"], cfg.system_prompt,
                                                               p["chosen"])), cfg.max_seq_len)
        rejected = truncate(chat_tokens(tokenizer, chat_messages(p["prompt"], cfg.system_prompt,
                                                                 p["rejected"])), cfg.max_seq_len)
        if chosen and rejected:
            out.append({"id": p["id"], "chosen": chosen, "rejected": rejected})
    if len(out) < len(pairs):
        print(f"dropped {len(pairs) - len(out)} pairs whose prompt fills max_seq_len")
    return out


def pad_batch(items: list[tuple[list[int], int]]) -> tuple[mx.array, mx.array]:
    """(tokens [B, T] zero-padded, lengths [B, 2] = (answer offset, length)): mlx-lm's layout."""
    longest = max(len(t) for t, _ in items)
    width = 1 + PAD_TO * ((longest + PAD_TO - 1) // PAD_TO)
    batch = np.zeros((len(items), width), np.int32)
    for row, (tokens, _) in enumerate(items):
        batch[row, :len(tokens)] = tokens
    return mx.array(batch), mx.array([[offset, len(tokens)] for tokens, offset in items])


def batch_order(lengths: list[int], batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for `step` (counted from 1). Items of similar length are batched
    together (less padding); the batches are shuffled per epoch from (seed, epoch), so any step's
    batch can be recomputed after a restart."""
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} examples, fewer than batch_size={batch_size}")
    by_length = np.argsort(lengths, kind="stable")
    n_batches = len(lengths) // batch_size
    epoch, position = divmod(step - 1, n_batches)
    chosen = np.random.default_rng([seed, epoch]).permutation(n_batches)[position]
    return by_length[chosen * batch_size:(chosen + 1) * batch_size].tolist()


def first_answer_position(items: list[tuple[list[int], int]]) -> int:
    """The first logit position any item's answer needs: target j is token j + 1, so the earliest
    answer target is min(offset) - 1. Logits before it only score the prompt."""
    return max(0, min(offset for _, offset in items) - 1)


def dpo_answer_position(dataset: list[dict]) -> int:
    return first_answer_position([d[side] for d in dataset for side in ("chosen", "rejected")])


def dpo_batch(dataset: list[dict], indices: list[int]) -> tuple[mx.array, mx.array]:
    items = [dataset[i]["chosen"] for i in indices] + [dataset[i]["rejected"] for i in indices]
    return pad_batch(items)
