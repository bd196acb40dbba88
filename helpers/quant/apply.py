"""Apply an allocation: quantize each unit at its bit-width in mlx-lm's own format,
and check the saved size against the storage formula.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from helpers.quant.units import SCALE_DTYPE, shapes_by_path, stored_bits


def clone_model(model: nn.Module) -> nn.Module:
    """A new model of the same class sharing the (immutable) weight arrays."""
    twin = type(model)(model.args)
    twin.load_weights(tree_flatten(model.parameters()))
    twin.eval()
    return twin


def quantize_model(model: nn.Module, config: dict, bits_by_path: dict, group_size: int,
                   stored=None):
    """Quantize `model` in place, layer by layer, and return (model, config) where config carries
    mlx-lm's per-layer "quantization" entries, so mlx_lm.load rebuilds exactly these layers.
    `stored` {path: {"weight", "scales", "biases"}} (e.g. GPTQ's) replaces the rounding of
    those layers."""
    params = {p: {"group_size": group_size, "bits": b, "mode": "affine"}
              for p, b in bits_by_path.items()}
    nn.quantize(model, class_predicate=lambda path, _module: params.get(path, False))
    model.update(tree_map_with_path(
        lambda k, v: v.astype(SCALE_DTYPE) if k.endswith((".scales", ".biases")) else v,
        model.parameters()))
    modules = dict(model.named_modules())
    for path, arrays in (stored or {}).items():
        for name in ("weight", "scales", "biases"):
            if arrays[name].shape != getattr(modules[path], name).shape:
                raise ValueError(f"{path}.{name}: stored shape {arrays[name].shape} does not "
                                 f"match {bits_by_path[path]}-bit, group {group_size}")
            setattr(modules[path], name, arrays[name])
    mx.eval(model.parameters())
    default = Counter(bits_by_path.values()).most_common(1)[0][0]
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    config["quantization"] = {"group_size": group_size, "bits": default, "mode": "affine",
                              **params}
    return model, config


def file_bytes(folder) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def expected_bytes(model: nn.Module, units: dict, bits_by_path: dict, group_size: int) -> int:
    """Weight bytes of the saved model: quantized matrices by `stored_bits`, the rest (norms) as
    they are in `model`."""
    shapes = shapes_by_path(units)
    quantized = sum(stored_bits(shapes[p], b, group_size) for p, b in bits_by_path.items()) // 8
    rest = sum(v.nbytes for k, v in tree_flatten(model.parameters())
               if k.rsplit(".", 1)[0] not in bits_by_path)
    return quantized + rest
