"""A DPO adapter stacked on the frozen SFT adapter (notebooks 05 and 06). A stacked layer computes

    y = base(x) + s1·(x·A1)·B1   (SFT: mlx-lm's `lora_a`, `lora_b`)
                + s2·(x·A2)·B2   (DPO: `dpo_a`, `dpo_b`),  each term switchable,

so one model in memory is any of the four systems (base, sft, dpo-only, sft+dpo).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten
from mlx_lm.tuner.lora import LoRALinear

from helpers.train.lora import lora_layers


class StackedLoRALinear(LoRALinear):
    """mlx-lm's LoRALinear (the SFT adapter) plus a second LoRA (the DPO adapter).
    `use_sft` / `use_dpo` switch each term on or off; with use_dpo off it computes exactly what
    LoRALinear computes."""

    @staticmethod
    def from_lora(layer: LoRALinear, rank: int, scale: float) -> "StackedLoRALinear":
        input_dims, sft_rank = layer.lora_a.shape
        output_dims = layer.lora_b.shape[1]
        stacked = StackedLoRALinear(input_dims, output_dims, r=sft_rank, scale=layer.scale)
        stacked.linear, stacked.dropout = layer.linear, layer.dropout
        stacked.lora_a, stacked.lora_b = layer.lora_a, layer.lora_b
        bound = 1 / math.sqrt(input_dims)  # the same init as LoRALinear
        stacked.dpo_a = mx.random.uniform(low=-bound, high=bound, shape=(input_dims, rank))
        stacked.dpo_b = mx.zeros((rank, output_dims))
        stacked.dpo_scale = scale
        return stacked

    use_sft = True
    use_dpo = True

    def delta(self) -> mx.array:
        """The active terms as one weight update, shaped like the base weight (out, in)."""
        out_dims, in_dims = self.lora_b.shape[1], self.lora_a.shape[0]
        delta = mx.zeros((out_dims, in_dims))
        if self.use_sft:
            delta = delta + (self.scale * self.lora_b.T) @ self.lora_a.T
        if self.use_dpo:
            delta = delta + (self.dpo_scale * self.dpo_b.T) @ self.dpo_a.T
        return delta

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """LoRALinear.fuse with both terms (the inherited one would silently drop DPO): the
        linear W + delta(), re-quantized as mlx-lm does unless `dequantize` or the base is fp32."""
        linear = self.linear
        quantized = isinstance(linear, nn.QuantizedLinear)
        weight = mx.dequantize(linear.weight, linear.scales, linear.biases, linear.group_size,
                               linear.bits, mode=linear.mode) if quantized else linear.weight
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in linear)
        fused.weight = weight + self.delta().astype(weight.dtype)
        if "bias" in linear:
            fused.bias = linear.bias
        if quantized and not dequantize:
            fused = nn.QuantizedLinear.from_linear(fused, linear.group_size, linear.bits,
                                                   mode=linear.mode)
        return fused

    def __call__(self, x):
        y = self.linear(x)
        x = self.dropout(x)
        if self.use_sft:
            y = y + (self.scale * ((x @ self.lora_a) @ self.lora_b)).astype(x.dtype)
        if self.use_dpo:
            y = y + (self.dpo_scale * ((x @ self.dpo_a) @ self.dpo_b)).astype(x.dtype)
        return y


def stacked_layers(model: nn.Module) -> list[tuple[str, StackedLoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, StackedLoRALinear)]


def add_dpo_adapter(model: nn.Module, config: dict, seed: int = 0) -> nn.Module:
    """Turn every (SFT) LoRALinear into a StackedLoRALinear with a fresh DPO adapter. Only the DPO
    adapter is trainable: the base and the SFT adapter stay frozen."""
    params = config["lora_parameters"]
    layers = lora_layers(model)
    if not layers:
        raise ValueError("The model has no LoRA layers: load the SFT adapter before adding DPO")
    mx.random.seed(seed)
    model.update_modules(tree_unflatten(
        [(name, StackedLoRALinear.from_lora(m, params["rank"], params["scale"]))
         for name, m in layers]))
    model.freeze()
    model.unfreeze(keys=["dpo_a", "dpo_b"], strict=False)
    mx.eval(model.parameters())
    return model


def set_adapters(model: nn.Module, sft: bool = True, dpo: bool = True) -> None:
    """Switch the SFT and DPO terms of every stacked layer (both off = the base model)."""
    layers = stacked_layers(model)
    if not layers:
        raise ValueError("The model has no stacked layers (see add_dpo_adapter / load_stacked)")
    for _, m in layers:
        m.use_sft, m.use_dpo = sft, dpo


