"""The exact merge of the two adapters (notebook 06). Since

    s1·(x·A1)·B1 + s2·(x·A2)·B2 = (x·[A1 A2])·[s1·B1 ; s2·B2],

the SFT and DPO adapters are exactly one LoRA of rank r1 + r2 and scale 1, which any mlx-lm tool
loads as a plain adapter; fusing it into the weights gives one model file.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from helpers.train.adapters import _same_layers, _write_adapter
from helpers.train.lora import lora_layers
from helpers.train.stacked import stacked_layers


def merged_adapter_weights(model: nn.Module) -> dict:
    """One LoRA of rank r1 + r2 and scale 1 equal to the two stacked ones:
    A = [A1 A2] (side by side), B = [s1·B1 ; s2·B2] (stacked), so (x·A)·B = s1·(x·A1)·B1 + s2·(x·A2)·B2."""
    weights = {}
    for name, m in stacked_layers(model):
        weights[f"{name}.lora_a"] = mx.concatenate([m.lora_a, m.dpo_a], axis=1)
        weights[f"{name}.lora_b"] = mx.concatenate([m.scale * m.lora_b, m.dpo_scale * m.dpo_b],
                                                   axis=0)
    return weights


def save_merged_adapter(model: nn.Module, out_dir: str | Path, sft_config: dict,
                        dpo_config: dict) -> Path:
    _same_layers(sft_config, dpo_config)
    rank = sft_config["lora_parameters"]["rank"] + dpo_config["lora_parameters"]["rank"]
    config = {**sft_config, "humanizer_adapter": "sft+dpo merged",
              "lora_parameters": {**sft_config["lora_parameters"], "rank": rank, "scale": 1.0,
                                  "dropout": 0.0}}
    return _write_adapter(out_dir, merged_adapter_weights(model), config)


def fuse(model: nn.Module) -> nn.Module:
    """Fold the active LoRA terms into fp32 base weights: W' = W + s1·(A1·B1)ᵀ + s2·(A2·B2)ᵀ.
    Decoding then costs exactly what the base costs. (On a quantized base use mlx-lm's fuse,
    which re-quantizes W' and so changes the numbers slightly.)"""
    layers = lora_layers(model)
    if any(isinstance(m.linear, nn.QuantizedLinear) for _, m in layers):
        raise ValueError("fuse() is for a dequantized (fp32) base; use mlx_lm.fuse instead")
    model.update_modules(tree_unflatten([(name, m.fuse()) for name, m in layers]))
    mx.eval(model.parameters())
    return model


@contextmanager
def fused_view(model: nn.Module):
    """Within the block the model's LoRA layers are fused (see fuse): decoding runs at the base's
    speed. Afterwards the adapters are back in place, switches unchanged."""
    layers = lora_layers(model)
    can_fuse = layers and not isinstance(layers[0][1].linear, nn.QuantizedLinear)
    if can_fuse:
        fuse(model)
    try:
        yield model
    finally:
        if can_fuse:
            model.update_modules(tree_unflatten(layers))
