"""Faster attention and SwiGLU for MLX on a Linux CPU, switched on once per process by `install()`.

MLX's Linux x86 CPU build evaluates exp one element at a time (~25 ns each), and exp sits inside
every attention softmax and every SiLU of the MLP: in a prefill of 8 prompts of 250 tokens it is
about half of the model's time. Multiplications, floor and casts are fast, so exp is rebuilt from
them and fused by `mx.compile` (~4 ns an element):

    exp(x) = 2^t,  t = x·log2(e) = k + f,  k = round(t),  |f| ≤ 1/2
    2^f    = Σ_{i≤6} (f·ln 2)^i / i!       (relative error < 2e-7 on |f| ≤ 1/2)
    2^k    = the float32 whose exponent bits are k + 127 (0 for t ≤ −127, inf for t ≥ 128)

and three kernels use it:

    softmax(x) = e / Σ e,  e = exp(x − max x)
    swiglu(g, u) = silu(g) · u = g · u / (1 + exp(−g))
    cross_entropy(x, y) = log Σ exp(x) − x_y   (training's loss, over the 49,152-token vocabulary)

Their backward passes are written out (`mx.custom_function`), so `mx.grad` never differentiates
through the bit manipulation:

    softmax:  dx = y ⊙ (dy − Σ dy ⊙ y)          swiglu: dg = dy · u · σ(1 + g(1 − σ)),  du = dy · g · σ
    log Σ exp: dx = dy · exp(x − log Σ exp x)

That exp stays in MLX, so it runs inside training's compiled step and inside mlx-lm's
asynchronous batched decoding. numpy's vectorised exp is faster still (~1 ns an element), but
handing an array to numpy evaluates the graph there and then, which `mx.compile` forbids and which
stalls asynchronous decoding. So arrays of NUMPY_FROM elements or more (prefills, scoring whole
texts) go through numpy when they can be evaluated, and through the MLX exp inside `mx.compile`;
arrays under FAST_FROM (decoding one sequence) keep mlx-lm's kernels. Attention also lays
grouped-query heads out so that one matmul per key/value head serves all the query heads that
share it. `install()` swaps softmax and SwiGLU into mlx-lm's llama model (SmolLM2's architecture)
on a Linux CPU in float32 and does nothing elsewhere (Apple and CUDA GPUs have fast kernels);
training's `cross_entropy` follows the same switch. HUMANIZER_FAST_CPU=0 turns it off. Outputs match the stock kernels
to float32 rounding (~1e-6 relative). bench/fast_cpu.py measures the gain.

Loading a model does not install them: changing another library's functions is the process's
choice, made once where it starts, so that every model of the process computes the same way
from its first call. These call it: each notebook's setup cell, the mains of helpers/tools
(rewrite_files, serve, export), of experiments/ and of bench/, and tests/conftest.py for the test
session. A script of your own calls `fast_cpu.install()` before its first model call (after
choosing MLX's device: it checks the default device); without it mlx-lm's own kernels run.
"""
from __future__ import annotations

import math
import os
import platform
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

LOG2E = 1 / math.log(2)
# below this many elements a compiled call costs more than it saves (decoding one sequence):
# mlx-lm's own kernels
FAST_FROM = 4096
# from this many elements, outside mx.compile, numpy's exp pays for its round trip (an evaluation
# and two copies); decoding 32 sequences stays under it, so it stays asynchronous
NUMPY_FROM = 1 << 18
_TAYLOR_2F = [math.log(2) ** i / math.factorial(i) for i in range(7)]  # 2^f = e^(f ln 2)


# ---------------------------------------------------------------- exp from multiply-adds


@partial(mx.compile, shapeless=True)
def _exp_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    """2^f, and the float32 bits of 2^k (as int32), for exp(x) = 2^f · 2^k."""
    t = mx.clip(x * LOG2E, -127.0, 128.0)
    k = mx.floor(t + 0.5)
    f = t - k
    p = _TAYLOR_2F[-1]
    for c in reversed(_TAYLOR_2F[:-1]):  # Horner
        p = p * f + c
    return p, (k.astype(mx.int32) + 127) * (1 << 23)


def exp(x: mx.array) -> mx.array:
    """exp of a float32 array (see the module docstring); no gradient."""
    p, bits = _exp_parts(x)
    return p * bits.view(mx.float32)  # a view, not a copy: it cannot be traced shapeless


def _numpy_now(x: mx.array) -> np.ndarray | None:
    """x evaluated as a float32 numpy array if it is big enough to be worth it, else None (also
    inside mx.compile or mx.vmap, which refuse to evaluate: the MLX path takes over there)."""
    if x.size < NUMPY_FROM:
        return None
    try:
        return np.asarray(x, dtype=np.float32)
    except ValueError:
        return None


# ---------------------------------------------------------------- softmax over the last axis


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    if (a := _numpy_now(x)) is not None:
        e = a - a.max(axis=-1, keepdims=True)
        np.exp(e, out=e)
        e /= e.sum(axis=-1, keepdims=True)
        return mx.array(e)
    e = exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    return (output * (cotangent - (cotangent * output).sum(axis=-1, keepdims=True)),)


# ---------------------------------------------------------------- cross-entropy over the vocabulary


def _exp_of(x: mx.array) -> mx.array:
    """exp(x), through numpy when x can be evaluated and is big, else the MLX exp above."""
    if (a := _numpy_now(x)) is not None:
        with np.errstate(over="ignore"):
            return mx.array(np.exp(a))
    return exp(x)


@mx.custom_function
def _logsumexp(x: mx.array) -> mx.array:
    top = x.max(axis=-1, keepdims=True)
    return (top + mx.log(_exp_of(x - top).sum(axis=-1, keepdims=True)))[..., 0]


@_logsumexp.vjp
def _logsumexp_vjp(primals, cotangent, output):
    x = primals  # a function of one array gets it alone, not in a tuple
    return (cotangent[..., None] * _exp_of(x - output[..., None]),)  # d lse / dx = softmax(x)


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """mlx.nn.losses.cross_entropy(logits, targets) per position (class indices, no reduction):
    log Σ exp(logits) − logits[target]. Its log-sum-exp over the vocabulary is the biggest exp of
    a training step (B × T × 49,152 values, forward and backward), so it uses the exp above
    while the kernels are installed (`install`), else mlx's own."""
    if logits.dtype != mx.float32 or not installed():
        return nn.losses.cross_entropy(logits, targets)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return _logsumexp(logits) - picked


# ---------------------------------------------------------------- SwiGLU: silu(g) · u


@partial(mx.compile, shapeless=True)
def _swiglu_forward(gate, up, exp_minus_gate):
    return gate * up / (1.0 + exp_minus_gate)


@partial(mx.compile, shapeless=True)
def _swiglu_backward(gate, up, exp_minus_gate, dy):
    sig = 1.0 / (1.0 + exp_minus_gate)
    return dy * up * sig * (1.0 + gate * (1.0 - sig)), dy * gate * sig


def _exp_minus(gate: mx.array) -> mx.array:
    """exp(−gate): inf for gate < −88, so that σ = 0, as it should."""
    if (g := _numpy_now(gate)) is not None:
        with np.errstate(over="ignore"):
            return mx.array(np.exp(-g))
    return exp(-gate)


@mx.custom_function
def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    return _swiglu_forward(gate, up, _exp_minus(gate))


@_swiglu.vjp
def _swiglu_vjp(primals, cotangent, output):
    gate, up = primals
    return _swiglu_backward(gate, up, _exp_minus(gate), cotangent)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """mlx-lm's swiglu, silu(gate) · up (small arrays and dtypes other than float32 go to
    mlx-lm's own)."""
    if gate.dtype != mx.float32 or up.dtype != mx.float32 or gate.size < FAST_FROM:
        # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
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
        # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
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
    probs = softmax(scores) if scores.size >= FAST_FROM else mx.softmax(scores, axis=-1)
    out = probs @ values
    return out.reshape(b, n_heads, q_len, dim)


def wanted() -> bool:
    """Linux, MLX on the CPU, and not turned off with HUMANIZER_FAST_CPU=0."""
    return (platform.system() == "Linux" and mx.default_device() == mx.cpu
            and os.environ.get("HUMANIZER_FAST_CPU", "1") != "0")


def install(force: bool = False) -> bool:
    """Use swiglu and scaled_dot_product_attention above in mlx-lm's llama model (see the module
    docstring for when); True if they are in use. Call it once, where the process starts;
    calling it again changes nothing, and where they are not wanted (`wanted`) it leaves mlx-lm
    as it is. Models built before and after both use them: the llama module looks the two names
    up at every call."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.models import llama

    if not (force or wanted()):
        return False
    llama.swiglu, llama.scaled_dot_product_attention = swiglu, scaled_dot_product_attention
    return True


def installed() -> bool:
    """Whether mlx-lm's llama model runs on the kernels above now."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.models import llama

    return llama.swiglu is swiglu and llama.scaled_dot_product_attention is \
        scaled_dot_product_attention


def uninstall() -> None:
    """Back to mlx-lm's own kernels."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.models import activations, base, llama

    llama.swiglu = activations.swiglu
    llama.scaled_dot_product_attention = base.scaled_dot_product_attention
