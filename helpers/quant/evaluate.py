"""A quantized model on held-out text: KL to the reference and perplexity with 95%
CIs, size, and decoding speed.
"""
from __future__ import annotations

import math
import time

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from helpers.core.statistics import bootstrap_ci
from helpers.data.prepare import load_prepared
from helpers.quant.apply import expected_bytes
from helpers.quant.kl import _torch, fake_quantized, kl_of_logq, log_softmax, next_token_dist
from helpers.quant.scan import predicted_kl
from helpers.quant.units import bits_per_weight


def heldout_texts(cfg) -> list[str]:
    """Human paragraphs of the validation split (never used for calibration or training)."""
    val = load_prepared(cfg)["val"]
    texts = list(dict.fromkeys(r["human"] for r in val))  # one per paragraph
    return texts[:cfg.quant_eval_texts]


def preset_heldout(cfg, model, tokenizer) -> "HeldOut":
    return HeldOut(model, tokenizer, heldout_texts(cfg), cfg.quant_eval_max_tokens)


class HeldOut:
    """Held-out texts, right-padded into one batch, with the reference's log-probabilities."""

    def __init__(self, model, tokenizer, texts: list[str], max_tokens: int):
        ids = [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] for t in texts]
        width = max(len(i) for i in ids)
        self.tokens = mx.array([i + [tokenizer.eos_token_id] * (width - len(i)) for i in ids])
        # position t predicts token t+1: count it only when that token is real text
        self.mask = np.array([[t + 1 < len(i) for t in range(width)] for i in ids])
        self.ref = next_token_dist(model(self.tokens))

    def evaluate(self, model) -> dict:
        """Per-text mean KL against the reference and per-text mean NLL of the text itself."""
        logq = log_softmax(model(self.tokens))  # one softmax for both the KL and the NLL
        kl = kl_of_logq(self.ref, logq).reshape(self.mask.shape)
        logq = logq.reshape(*self.mask.shape, -1)
        targets = _torch(self.tokens).long()[:, 1:]
        nll = -logq[:, :-1].gather(-1, targets[..., None])[..., 0].numpy()
        nll = np.concatenate([nll, np.zeros((nll.shape[0], 1), np.float32)], axis=1)
        n = self.mask.sum(1)
        return {"kl_per_text": (kl * self.mask).sum(1) / n,
                "nll_per_text": (nll * self.mask).sum(1) / n, "tokens_per_text": n}


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% bootstrap CI over independent units (texts): the series' one CI function."""
    ci = bootstrap_ci(values)
    return ci["mean"], ci["lo"], ci["hi"]


def summarize(result: dict) -> dict:
    """Mean KL with its CI over texts, and perplexity exp(token-weighted NLL) with a CI from the
    per-text NLLs."""
    kl, kl_lo, kl_hi = mean_ci(result["kl_per_text"])
    weights = result["tokens_per_text"] / result["tokens_per_text"].sum()
    nll = float((result["nll_per_text"] * weights).sum())
    _, nll_lo, nll_hi = mean_ci(result["nll_per_text"])
    return {"kl": kl, "kl_lo": kl_lo, "kl_hi": kl_hi, "ppl": math.exp(nll),
            "ppl_lo": math.exp(nll_lo), "ppl_hi": math.exp(nll_hi)}


def compare(model, held: HeldOut, sens: dict, configs: dict, progress: bool = True):
    """One row per configuration, {name: {path: bits}} or {name: plan} with plan = {"bits":
    {path: bits}, "group_size": g (default the scan's), "weights": {path: dequantized matrix}
    (default round-to-nearest)}: bpw and weight MB (the same accounting for every method),
    predicted KL, and the held-out KL (vs the reference; also per text, for paired comparisons)
    and perplexity, measured with fake-quantized weights."""
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd

    units = sens["units"]
    rows = []
    for name, plan in tqdm(configs.items(), desc="evaluating", disable=not progress):
        bits, group = (plan["bits"], plan.get("group_size", sens["group_size"])) if "bits" in plan \
            else (plan, sens["group_size"])
        start = time.perf_counter()
        with fake_quantized(model, bits, group, plan.get("weights") if "bits" in plan else None):
            per_text = held.evaluate(model)
        result = summarize(per_text) | {"kl_per_text": per_text["kl_per_text"].tolist()}
        result["eval s"] = time.perf_counter() - start
        rows.append({"config": name, "bpw": bits_per_weight(bits, units, group),
                     "MB": expected_bytes(model, units, bits, group) / 2**20,
                     "predicted KL": predicted_kl(sens, bits) if group == sens["group_size"]
                     else float("nan"), **result})
    return pd.DataFrame(rows)


def speed_prompt(cfg, tokenizer, words: int = 20) -> str:
    """The start of a held-out paragraph, as plain text to continue: quantized prefill is slow
    on CPU, and decode speed barely depends on the prompt at these lengths."""
    return " ".join(heldout_texts(cfg)[0].split()[:words])


def decode_speed(model, tokenizer, prompt: str, max_tokens: int) -> dict:
    """Greedy generation speed (tokens/s) for prompt processing and decoding."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm import stream_generate

    last = None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        pass
    return {"prefill_tok_s": last.prompt_tps, "decode_tok_s": last.generation_tps,
            "generated": last.generation_tokens}
