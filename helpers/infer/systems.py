"""The four systems (base, sft, dpo-only, sft+dpo): where their adapters live, and
one loader that stacks them on the quantized base.
"""
from __future__ import annotations

from pathlib import Path

from helpers.train.adapters import load_stacked
from helpers.train.base import load_base
from helpers.train.stacked import set_adapters, stacked_layers

SYSTEMS = ("base", "sft", "dpo-only", "sft+dpo")

SWITCHES = {"base": (False, False), "sft": (True, False), "dpo-only": (False, True),
            "sft+dpo": (True, True)}


def adapter_dir(cfg, name: str) -> Path:
    return cfg.input_path(f"adapters/{name}")


def load_system(cfg, which: str = "sft+dpo"):
    """(model, tokenizer) for base, sft, dpo-only, sft+dpo or merged. For the four stackable
    systems the model carries both adapters (when trained) and `use_system` switches between them
    without reloading."""
    from mlx_lm.tuner.utils import load_adapters

    if which not in SYSTEMS + ("merged",):
        raise ValueError(f"unknown system {which!r}; choose one of {SYSTEMS + ('merged',)}")
    model, tokenizer = load_base(cfg)
    if which == "merged":
        load_adapters(model, str(adapter_dir(cfg, "merged")))
    elif which != "base" and (adapter_dir(cfg, "dpo") / "adapters.safetensors").exists():
        load_stacked(model, adapter_dir(cfg, "sft"), adapter_dir(cfg, "dpo"))
        use_system(model, which)
    elif which == "sft":
        load_adapters(model, str(adapter_dir(cfg, "sft")))
    elif which != "base":
        raise FileNotFoundError(f"{adapter_dir(cfg, 'dpo')}: no DPO adapter; run notebook 05")
    model.eval()  # adapter modules are created in training mode (dropout on)
    return model, tokenizer


def use_system(model, which: str) -> None:
    """Switch a stacked model (base + SFT + DPO) to one of the four systems."""
    if which == "base" and not stacked_layers(model):
        return
    sft, dpo = SWITCHES[which]
    set_adapters(model, sft=sft, dpo=dpo)
