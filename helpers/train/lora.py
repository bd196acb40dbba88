"""LoRA on a frozen base (notebook 04): mlx-lm's `LoRALinear` wrapped around every target linear
layer, y = base(x) + s·(x·A)·B with s = alpha / rank and B = 0 at the start, so training begins
exactly at the base model.

Fake quantization: on a CPU, MLX's quantized matmul is several times slower than an fp32 matmul
through OpenBLAS (notebook 04 measures it). With `cfg.fake_quant` the quantized base is dequantized
once after loading; dequantize(W_q) holds exactly the values the quantized layer multiplies with, so
training and inference compute the same function (up to fp32 summation order), faster. What is
stored on disk stays quantized (notebook 03's model or the GGUF); adapters are small fp32 files.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from helpers.core.models import base_model_spec
from helpers.train.base import base_fingerprint


def lora_config(cfg, which: str = "sft") -> dict:
    """mlx-lm's adapter_config.json for the SFT or DPO adapter (mlx-lm wants scale = alpha / rank)."""
    rank, alpha = (cfg.lora_rank, cfg.lora_alpha) if which == "sft" else (cfg.dpo_rank, cfg.dpo_alpha)
    return {
        "fine_tune_type": "lora",
        "num_layers": cfg.lora_layers,
        "lora_parameters": {"rank": rank, "scale": alpha / rank, "dropout": cfg.lora_dropout,
                            "keys": list(cfg.lora_targets)},
        "base_model": base_model_spec(cfg),  # the model it was trained on, not just the hub id
        "base_fingerprint": base_fingerprint(cfg),
        "humanizer_adapter": which,
    }


def add_lora(model: nn.Module, config: dict, seed: int = 0) -> nn.Module:
    """Freeze the model, then wrap the target linears with mlx-lm's LoRALinear (A random, B zero:
    the model's output is unchanged until B is trained). Adapters already on the model are removed
    first, so running this again starts a fresh adapter instead of failing."""
    remove_adapters(model)
    check_targets(model, config)
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"])
    mx.eval(model.parameters())
    return model


def check_targets(model: nn.Module, config: dict) -> None:
    """Raise unless every target linear exists in every block the adapter covers (mlx-lm skips a
    name it does not find, which would silently train fewer layers on another architecture)."""
    keys = config["lora_parameters"].get("keys") or ()  # none given: mlx-lm takes every linear
    first = len(model.layers) - len(model.layers[-max(config["num_layers"], 0):])
    for index, block in enumerate(model.layers[first:], start=first):
        linears = [name for name, m in block.named_modules()
                   if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
        missing = [key for key in keys if key not in linears]
        if missing:
            raise ValueError(f"LoRA target(s) {missing} are not linears of block {index} of "
                             f"{type(model).__module__}; its linears are {sorted(linears)}: "
                             "set lora_targets to some of them")


def remove_adapters(model: nn.Module) -> nn.Module:
    """The bare base again: every LoRA (or stacked) layer replaced by the linear it wraps."""
    layers = lora_layers(model)
    if layers:
        model.update_modules(tree_unflatten([(name, m.linear) for name, m in layers]))
    return model


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def trainable_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
