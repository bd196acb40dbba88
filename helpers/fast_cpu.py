"""Faster attention and SwiGLU for MLX on a Linux CPU (used by every notebook there).

MLX's Linux x86 CPU build evaluates exp one element at a time (~12 ns each); numpy's exp is
vectorised and ~15x faster. exp sits inside every attention softmax and every SiLU of the MLP, so
in a prefill of 8 prompts of 250 tokens it is about half of the model's time. The two kernels here
hand that part to numpy and keep everything else in MLX:

    softmax(x) = e / Σ e,  e = exp(x − max x)          (numpy, in place)
    swiglu(g, u) = silu(g) · u = g · u / (1 + exp(−g))  (numpy, in place)

Their backward passes are written out (`mx.custom_function`), so `mx.grad` through them is right:

    softmax:  dx = y ⊙ (dy − Σ dy ⊙ y)          swiglu: dg = dy · u · σ(1 + g(1 − σ)),  du = dy · g · σ

but a numpy round trip evaluates the graph halfway, which `mx.compile` forbids and which makes a
backward pass slower than MLX's own: training runs inside `stock_kernels()` (helpers/train.py).

Attention also lays grouped-query heads out so that one matmul per key/value head serves all the
query heads that share it. `install()` swaps both into mlx-lm's llama model (SmolLM2's architecture)
on a Linux CPU in fp32 and does nothing elsewhere (Apple and CUDA GPUs have fast kernels, and a
numpy round trip would cost a copy there); HUMANIZER_FAST_CPU=0 turns it off. Outputs match the
stock kernels to float32 rounding (~1e-6 relative). bench/fast_cpu.py measures the gain.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager

import mlx.core as mx
import numpy as np


# below this many elements a numpy round trip (an evaluation and two copies) costs more than
# MLX's exp: single-sequence decoding keeps MLX's own
NUMPY_FROM = 16_384


def _numpy(x: mx.array) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- softmax over the last axis


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    e = _numpy(x) - _numpy(x.max(axis=-1, keepdims=True))
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return mx.array(e)


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    return (output * (cotangent - (cotangent * output).sum(axis=-1, keepdims=True)),)


# ---------------------------------------------------------------- SwiGLU: silu(g) · u


def _sigmoid(gate: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(−g) = inf for g < −88: σ = 0, as it should
        s = np.exp(-gate)
    s += 1.0
    return np.reciprocal(s, out=s)


@mx.custom_function
def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    g = _numpy(gate)
    out = _sigmoid(g)
    out *= g
    out *= _numpy(up)
    return mx.array(out)


@_swiglu.vjp
def _swiglu_vjp(primals, cotangent, output):
    gate, up = primals
    g, u, dy = _numpy(gate), _numpy(up), _numpy(cotangent)
    sig = _sigmoid(g)
    d_up = dy * g * sig
    d_gate = dy * u * sig * (1.0 + g * (1.0 - sig))
    return mx.array(d_gate), mx.array(d_up)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """mlx-lm's swiglu, silu(gate) · up (small arrays and dtypes other than float32 go to
    mlx-lm's own)."""
    if gate.dtype != mx.float32 or up.dtype != mx.float32 or gate.size < NUMPY_FROM:
        from mlx_lm.models.activations import swiglu as stock_swiglu
        return stock_swiglu(gate, up)
    return _swiglu(gate, up)


# ---------------------------------------------------------------- attention


def _grouped_mask(mask, n_kv_heads: int, repeats: int, q_len: int, k_len: int, dtype):
    """The mask as additive scores of shape (B or 1, Hk or 1, repeats or 1, L, S)."""
    if isinstance(mask, str):  # "causal": query i sits at position k_len − q_len + i
        rows = mx.arange(k_len - q_len, k_len)[:, None]
        mask = rows >= mx.arange(k_len)[None]
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    b, h = mask.shape[:2]
    mask = (mask.reshape(b, n_kv_heads, repeats, *mask.shape[2:]) if h > 1
            else mask.reshape(b, 1, 1, *mask.shape[2:]))
    if mask.dtype == mx.bool_:  # as MLX's own: a finite floor, so a fully masked row stays finite
        mask = mx.where(mask, mx.array(0.0, dtype), mx.array(mx.finfo(dtype).min, dtype))
    return mask


def scaled_dot_product_attention(queries, keys, values, cache, scale: float, mask=None,
                                 sinks=None):
    """mlx-lm's attention (B, H, L, D) with `softmax` above; quantized caches and attention
    sinks go to mlx-lm's own."""
    if hasattr(cache, "bits") or sinks is not None or queries.dtype != mx.float32:
        from mlx_lm.models.base import scaled_dot_product_attention as stock_attention
        return stock_attention(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)
    b, n_heads, q_len, dim = queries.shape
    n_kv_heads, k_len = keys.shape[1], keys.shape[2]
    repeats = n_heads // n_kv_heads
    # query heads h·repeats … h·repeats+repeats−1 share key/value head h: one matmul for them all
    q = (queries * scale).reshape(b, n_kv_heads, repeats * q_len, dim)
    scores = q @ keys.swapaxes(-1, -2)
    if mask is not None:
        scores = (scores.reshape(b, n_kv_heads, repeats, q_len, k_len)
                  + _grouped_mask(mask, n_kv_heads, repeats, q_len, k_len, scores.dtype))
        scores = scores.reshape(b, n_kv_heads, repeats * q_len, k_len)
    probs = softmax(scores) if scores.size >= NUMPY_FROM else mx.softmax(scores, axis=-1)
    out = probs @ values
    return out.reshape(b, n_heads, q_len, dim)


def wanted() -> bool:
    """Linux, MLX on the CPU, and not turned off with HUMANIZER_FAST_CPU=0."""
    return (platform.system() == "Linux" and mx.default_device() == mx.cpu
            and os.environ.get("HUMANIZER_FAST_CPU", "1") != "0")


def install(force: bool = False) -> bool:
    """Use swiglu and scaled_dot_product_attention above in mlx-lm's llama model (see the module
    docstring for when); True if they are in use. Models built before and after both use them:
    the llama module looks the two names up at every call."""
    from mlx_lm.models import llama

    if not (force or wanted()):
        return False
    llama.swiglu, llama.scaled_dot_product_attention = swiglu, scaled_dot_product_attention
    return True


def uninstall() -> None:
    """Back to mlx-lm's own kernels."""
    from mlx_lm.models import activations, base, llama

    llama.swiglu = activations.swiglu
    llama.scaled_dot_product_attention = base.scaled_dot_product_attention


@contextmanager
def stock_kernels():
    """Within the block mlx-lm's own kernels run (training: see the module docstring); afterwards
    whatever was in use before."""
    from mlx_lm.models import llama

    before = llama.swiglu, llama.scaled_dot_product_attention
    uninstall()
    try:
        yield
    finally:
        llama.swiglu, llama.scaled_dot_product_attention = before
