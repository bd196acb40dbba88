"""Adapters on disk, in mlx-lm's format (adapters.safetensors + adapter_config.json,
loadable by mlx_lm.generate --adapter-path), each tied to the base it was trained
on by a fingerprint.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.tuner.utils import load_adapters

from helpers.core.cache import bytes_digest
from helpers.core.models import base_model_spec
from helpers.train.base import base_fingerprint
from helpers.train.lora import lora_layers
from helpers.train.stacked import StackedLoRALinear, add_dpo_adapter, stacked_layers

ADAPTER_FILE = "adapters.safetensors"

CONFIG_FILE = "adapter_config.json"


def _write_adapter(out_dir: str | Path, weights: dict, config: dict) -> Path:
    """adapters.safetensors + adapter_config.json, written to a temporary folder then renamed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mx.save_safetensors(str(tmp / ADAPTER_FILE), weights)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def read_adapter_config(path: str | Path) -> dict:
    path = Path(path) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train the adapter first (notebook 04 or 05)")
    return json.loads(path.read_text(encoding="utf-8"))


def save_sft_adapter(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    weights = {f"{name}.{key}": getattr(m, key) for name, m in lora_layers(model)
               for key in ("lora_a", "lora_b")}
    return _write_adapter(out_dir, weights, config)


def save_dpo_adapter(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    """The DPO adapter alone, under mlx-lm's names (lora_a/lora_b): a standard adapter file."""
    weights = {}
    for name, m in stacked_layers(model):
        weights[f"{name}.lora_a"], weights[f"{name}.lora_b"] = m.dpo_a, m.dpo_b
    return _write_adapter(out_dir, weights, config)


def adapter_digest(model: nn.Module) -> str:
    """A hash of the adapters as they are in memory (every LoRA matrix and scale; not which
    terms are switched on): outputs cached for one set of adapters are not reused for another."""
    def chunks():
        for name, layer in lora_layers(model):
            stacked = isinstance(layer, StackedLoRALinear)
            arrays = (layer.lora_a, layer.lora_b) + ((layer.dpo_a, layer.dpo_b) if stacked else ())
            scales = (layer.scale,) + ((layer.dpo_scale,) if stacked else ())
            yield f"{name}{scales}".encode()
            for array in arrays:
                yield np.array(array.astype(mx.float32)).tobytes()

    return bytes_digest(chunks())


def _same_layers(sft_config: dict, dpo_config: dict) -> None:
    for key in ("num_layers",):
        if sft_config[key] != dpo_config[key]:
            raise ValueError(f"SFT and DPO adapters differ in {key}: {sft_config[key]} vs "
                             f"{dpo_config[key]}; they must sit on the same linears")
    sft_keys = sorted(sft_config["lora_parameters"]["keys"])
    dpo_keys = sorted(dpo_config["lora_parameters"]["keys"])
    if sft_keys != dpo_keys:
        raise ValueError(f"SFT and DPO adapters target different linears: {sft_keys} vs {dpo_keys}")


def load_stacked(model: nn.Module, sft_path: str | Path, dpo_path: str | Path) -> nn.Module:
    """Base + SFT adapter + DPO adapter, as they were during DPO training (both switched on)."""
    sft_config, dpo_config = read_adapter_config(sft_path), read_adapter_config(dpo_path)
    _same_layers(sft_config, dpo_config)
    load_adapters(model, str(sft_path))
    add_dpo_adapter(model, dpo_config)
    weights = mx.load(str(Path(dpo_path) / ADAPTER_FILE))
    expected = {f"{name}.lora_{ab}" for name, _ in stacked_layers(model) for ab in "ab"}
    if set(weights) != expected:
        raise ValueError(f"{dpo_path}: the DPO adapter's tensors do not match the model's LoRA "
                         f"layers ({len(weights)} tensors, {len(expected)} expected)")
    model.load_weights([(k.replace(".lora_", ".dpo_"), v) for k, v in weights.items()],
                       strict=False)
    model.freeze()
    model.eval()  # the new LoRA modules were created in training mode (dropout on)
    mx.eval(model.parameters())
    return model


def check_base(adapter_path: str | Path, cfg) -> bool:
    """Warn (and return False) when the adapter was trained on another base than cfg's."""
    trained_on = read_adapter_config(adapter_path)
    expected = trained_on.get("base_fingerprint")
    if expected is None or expected == base_fingerprint(cfg):
        return True
    warnings.warn(f"{adapter_path} was trained on {trained_on.get('base_model')!r} (fingerprint "
                  f"{expected}), but it is being loaded onto {base_model_spec(cfg)!r} (fingerprint "
                  f"{base_fingerprint(cfg)}): its outputs will differ from training's",
                  stacklevel=2)
    return False
