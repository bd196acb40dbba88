"""KL(reference || quantized) of the next-token distributions, measured cheaply: weights
fake-quantized (dequantize(quantize(W)) in float32) and the forward pass restarted at
the changed block from cached hidden states.
"""
from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from helpers.quant.units import SCALE_DTYPE


def fake_quantize(w: mx.array, bits: int, group_size: int) -> mx.array:
    """The weights a saved `bits`-bit model computes with, as a float32 matrix: quantize, round
    the scales and biases to their stored float16, dequantize."""
    q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    return mx.dequantize(q, scales.astype(SCALE_DTYPE).astype(w.dtype),
                         biases.astype(SCALE_DTYPE).astype(w.dtype),
                         group_size=group_size, bits=bits)


@contextmanager
def fake_quantized(model: nn.Module, bits_by_path: dict, group_size: int, weights=None):
    """Temporarily replace the weights of the given layers by their fake-quantized versions
    (round-to-nearest, or the given dequantized `weights` {path: matrix}, e.g. GPTQ's)."""
    modules = dict(model.named_modules())
    weights = weights or {}
    originals = {}
    try:
        for path, bits in bits_by_path.items():
            originals[path] = modules[path].weight
            modules[path].weight = (weights[path] if path in weights
                                    else fake_quantize(originals[path], bits, group_size))
        yield model
    finally:
        for path, weight in originals.items():
            modules[path].weight = weight


def lm_head(model: nn.Module, h: mx.array) -> mx.array:
    h = model.model.norm(h)
    return model.lm_head(h) if hasattr(model, "lm_head") else model.model.embed_tokens.as_linear(h)


def forward_from(model: nn.Module, h: mx.array, start: int) -> mx.array:
    """Logits from the hidden state entering block `start` (Llama-style: blocks, norm, head)."""
    for layer in model.layers[start:]:
        h = layer(h, "causal")
    return lm_head(model, h)


def _torch(a: mx.array):
    # deferred: torch is slow to import, and only this path needs it
    import torch
    return torch.from_numpy(np.array(a, dtype=np.float32))


def log_softmax(logits: mx.array):
    """Log-probabilities as a torch tensor (n_positions, vocab). The vocabulary-wide softmax runs
    in torch because MLX's CPU exp is several times slower than torch's vectorized one."""
    # deferred: torch is slow to import, and only this path needs it
    import torch
    logits = _torch(logits)
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)


def _rowdot(a, b):
    """Row-wise dot products of two (n, vocab) tensors, as one batched matmul (fast)."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


def next_token_dist(logits: mx.array) -> dict:
    """The reference's next-token distribution at every position: log p and p."""
    logp = log_softmax(logits)
    return {"logp": logp, "p": logp.exp()}


def token_kl(ref: dict, logits: mx.array, chunk: int = 512) -> np.ndarray:
    """KL(reference || model) = sum_v p_v (log p_v - log q_v) at every position, in nats.
    Exactly 0 when the logits are the reference's; below ~1e-6 it is float32 rounding noise."""
    logits = logits.reshape(-1, logits.shape[-1])
    return np.concatenate([kl_of_logq(ref, log_softmax(logits[i:i + chunk]), i)
                           for i in range(0, logits.shape[0], chunk)])


def kl_of_logq(ref: dict, logq, start: int = 0, chunk: int = 512) -> np.ndarray:
    """token_kl from the model's log-probabilities (torch, rows start.. of the reference's)."""
    return np.concatenate([_rowdot(ref["p"][start + i:start + i + chunk],
                                   ref["logp"][start + i:start + i + chunk] - logq[i:i + chunk]).numpy()
                           for i in range(0, logq.shape[0], chunk)])


class Reference:
    """One pass of the reference model over `tokens`, kept for every later measurement: the
    input of each block, and the next-token log-probabilities."""

    def __init__(self, model: nn.Module, tokens: mx.array):
        self.tokens = tokens
        self.hidden = [model.model.embed_tokens(tokens)]
        for layer in model.layers:
            self.hidden.append(layer(self.hidden[-1], "causal"))
            mx.eval(self.hidden[-1])
        logits = lm_head(model, self.hidden[-1])
        full = model(tokens)
        if not mx.allclose(logits, full, atol=1e-4).item():
            raise ValueError(f"{type(model).__module__}: restarting the forward pass at a block "
                             "does not reproduce the model's logits; the scan supports "
                             "Llama-style models (embeddings, blocks, norm, head)")
        self.dist = next_token_dist(logits)

    def kl_from(self, model: nn.Module, start: int) -> np.ndarray:
        """Per-token KL of the (perturbed) model against the reference, recomputing only from
        block `start` (-1: from the embeddings)."""
        h = model.model.embed_tokens(self.tokens) if start < 0 else self.hidden[start]
        return token_kl(self.dist, forward_from(model, h, max(start, 0)))


def kl_stats(kl: np.ndarray) -> dict:
    return {"mean": float(kl.mean()), "median": float(np.median(kl)),
            "p95": float(np.percentile(kl, 95))}
