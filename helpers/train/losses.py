"""The two losses (notebooks 04 and 05), on the answer tokens only:

- SFT: next-token cross-entropy (mlx-lm's ChatDataset finds where the answer starts; the batch
  layout is mlx-lm's: tokens + (answer offset, length) per row).
- DPO: sigmoid loss on  beta·[(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))]
  where π is base + SFT + DPO and π_ref is base + SFT (the DPO term switched off), whose
  log-probs are computed once per pair before training.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.models import llama
from tqdm.auto import tqdm

from helpers.core.fast_cpu import cross_entropy
from helpers.train.batches import dpo_answer_position, dpo_batch, first_answer_position, pad_batch
from helpers.train.stacked import set_adapters


def answer_mask(lengths: mx.array, width: int) -> mx.array:
    """[B, width] mask over next-token targets: true where the target is an answer token.
    Target j is token j + 1, so answer targets are offset <= j + 1 < length. (mlx-lm 0.32's
    default_loss uses `<= length` and so also trains on one padding token per row: mlx-lm PR 1697.)"""
    steps = mx.arange(1, width + 1)
    return mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])


def answer_logits(model, inputs: mx.array, start: int = 0) -> mx.array:
    """The model's logits at positions start.. only. The prompt is half a batch's positions, and
    the vocabulary projection with its cross-entropy is the costliest per-position work, so mlx-lm's
    llama (SmolLM2) gets its hidden states cut before its head; another architecture may scale or
    soft-cap in its head, so it gets its full logits, cut after."""
    if start and type(model).__call__ is llama.Model.__call__:
        hidden = model.model(inputs)[:, start:]
        if model.args.tie_word_embeddings:
            return model.model.embed_tokens.as_linear(hidden)
        return model.lm_head(hidden)
    return model(inputs)[:, start:]


def answer_token_losses(model, batch: mx.array, lengths: mx.array, start: int = 0):
    """(cross-entropy of every next-token target from position `start` on, the mask of those
    that are answer tokens): `start` (first_answer_position) skips logits no answer token needs."""
    logits = answer_logits(model, batch[:, :-1], start)
    mask = answer_mask(lengths, batch.shape[1] - 1)[:, start:]
    return cross_entropy(logits, batch[:, 1 + start:]), mask


def answer_logprobs(model, batch: mx.array, lengths: mx.array, start: int = 0) -> mx.array:
    """Sum of log p(answer token | everything before it), one number per sequence."""
    token_losses, mask = answer_token_losses(model, batch, lengths, start)
    return (-token_losses * mask).sum(axis=1)


def sft_loss(model, batch, lengths, start: int = 0):
    """Mean cross-entropy over the answer tokens of the batch: the prompt is context only."""
    token_losses, mask = answer_token_losses(model, batch, lengths, start)
    n_tokens = mask.sum()
    loss = (token_losses * mask).astype(mx.float32).sum() / n_tokens
    return loss, {"tokens": n_tokens}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Sigmoid DPO loss (Rafailov et al., 2023) and its diagnostics, from summed log-probs."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = mx.logaddexp(mx.zeros_like(margin), -margin).mean()  # = -log sigmoid(margin)
    return loss, {
        "reward_accuracy": (margin > 0).astype(mx.float32).mean(),
        "margin": margin.mean(),
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
        "chosen_logp": policy_chosen.mean(),
        "rejected_logp": policy_rejected.mean(),
    }


def make_dpo_batch_loss(beta: float, start: int = 0):
    def loss_fn(model, batch, lengths, ref_chosen, ref_rejected):
        logps = answer_logprobs(model, batch, lengths, start)
        half = logps.shape[0] // 2  # chosen first, then rejected
        return dpo_loss(logps[:half], logps[half:], ref_chosen, ref_rejected, beta)
    return loss_fn


def reference_logprobs(model, dataset: list[dict], batch_size: int,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """log π_ref(chosen), log π_ref(rejected) for every pair, with the DPO term switched off."""
    set_adapters(model, sft=True, dpo=False)
    model.eval()
    chosen, rejected, first = [], [], dpo_answer_position(dataset)
    try:
        for start in tqdm(range(0, len(dataset), batch_size), disable=not progress,
                          desc="reference log-probs"):
            indices = list(range(start, min(start + batch_size, len(dataset))))
            logps = answer_logprobs(model, *dpo_batch(dataset, indices), first)
            mx.eval(logps)
            chosen += logps[:len(indices)].tolist()
            rejected += logps[len(indices):].tolist()
    finally:
        set_adapters(model, sft=True, dpo=True)
    return np.array(chosen, np.float32), np.array(rejected, np.float32)


def evaluate_sft(model, dataset: list[tuple[list[int], int]], batch_size: int) -> float:
    """Mean cross-entropy per answer token over the whole dataset (dropout off)."""
    was_training = model.training
    model.eval()
    total, tokens, first = 0.0, 0, first_answer_position(dataset)
    for start in range(0, len(dataset), batch_size):
        loss, metrics = sft_loss(model, *pad_batch(dataset[start:start + batch_size]), first)
        mx.eval(loss, metrics)
        total += loss.item() * metrics["tokens"].item()
        tokens += metrics["tokens"].item()
    model.train(was_training)
    return total / max(tokens, 1)
