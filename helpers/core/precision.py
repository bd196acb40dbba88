"""The float precision a model computes in: an exact float copy of a quantized model (the
reference of the sensitivity scan), and the compute dtype of its float parameters (float32 on a
CPU, where bfloat16 matmuls are slow)."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map


def dequantize_exactly(model: nn.Module) -> nn.Module:
    """mlx-lm's dequantize_model, after widening float16 scales and biases to float32: dequantizing
    with float16 scales returns float16 weights, rounded away from what the quantized layer
    computes once its scales are float32 (up to 5e-3 in the logits of a small model)."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
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
