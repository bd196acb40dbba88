"""The units of quantization: the weight matrices that get one bit-width each (every
linear layer, or every block), and the exact storage a quantized matrix takes
(packed weights + float16 scales and biases).
"""
from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn

SCALE_DTYPE = mx.float16  # scales and biases are stored in 16 bits, as mlx-lm does (it uses the


# model's dtype, usually bfloat16); float16 keeps 3 more mantissa bits for the same storage
SCALE_BITS = 16

PROTECTIONS = ("lm_head", "embeddings", "first_block", "last_block")


def quant_units(model: nn.Module, granularity: str = "linear", group_size: int = 64) -> dict:
    """{unit name: {"paths", "shapes", "block", "kind", "n_weights"}}, ordered by block.

    A unit is one linear layer (granularity "linear") or all linears of a block ("block"): kind
    "block". The token embedding is its own unit, kind "embedding", block -1 (with tied weights
    it is also the lm_head); an untied lm_head is kind "lm_head", block = number of blocks."""
    if granularity not in ("linear", "block"):
        raise ValueError(f"scan_granularity must be 'linear' or 'block', got {granularity!r}")
    n_blocks = len(model.layers)
    units = {}
    for path, module in sorted(model.named_modules(), key=lambda item: _natural_key(item[0])):
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        shape = tuple(module.weight.shape)
        if shape[-1] % group_size:
            raise ValueError(f"{path}: input size {shape[-1]} is not a multiple of group_size "
                             f"{group_size}")
        match = re.search(r"\blayers\.(\d+)\.", path)
        if match:
            block, kind = int(match.group(1)), "block"
            name = f"model.layers.{block}" if granularity == "block" else path
        elif isinstance(module, nn.Embedding):
            block, kind, name = -1, "embedding", path
        else:
            block, kind, name = n_blocks, "lm_head", path
        unit = units.setdefault(name, {"paths": [], "shapes": [], "block": block, "kind": kind,
                                       "n_weights": 0})
        unit["paths"].append(path)
        unit["shapes"].append(list(shape))
        unit["n_weights"] += shape[0] * shape[1]
    return dict(sorted(units.items(), key=lambda item: (item[1]["block"], _natural_key(item[0]))))


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def stored_bits(shape, bits: int, group_size: int) -> int:
    """Bits a quantized (out, in) matrix takes in the saved file: the packed `bits`-bit weights
    plus one float16 scale and one float16 bias per group of `group_size` inputs."""
    rows, cols = shape
    if cols % group_size:
        raise ValueError(f"a ({rows}, {cols}) matrix has no whole groups of {group_size}")
    return rows * cols * bits + rows * (cols // group_size) * 2 * SCALE_BITS


def shapes_by_path(units: dict) -> dict:
    return {p: s for u in units.values() for p, s in zip(u["paths"], u["shapes"])}


def bits_per_weight(bits_by_path: dict, units: dict, group_size: int) -> float:
    """Stored bits per weight over every quantizable matrix (block linears and embedding)."""
    shapes = shapes_by_path(units)
    total = sum(stored_bits(shapes[p], b, group_size) for p, b in bits_by_path.items())
    return total / sum(shapes[p][0] * shapes[p][1] for p in bits_by_path)


def uniform_bits(units: dict, bits: int) -> dict:
    return {p: bits for u in units.values() for p in u["paths"]}


def protected_units(units: dict, protect) -> set:
    """Units that keep the highest candidate bit-width whatever the measurement says."""
    unknown = set(protect) - set(PROTECTIONS)
    if unknown:
        raise ValueError(f"Unknown protection(s) {sorted(unknown)}; choose from {PROTECTIONS}")
    blocks = [u["block"] for u in units.values() if u["kind"] == "block"]
    tied = not any(u["kind"] == "lm_head" for u in units.values())
    wanted = {"embedding": "embeddings" in protect or ("lm_head" in protect and tied),
              "lm_head": "lm_head" in protect}
    chosen = set()
    for name, u in units.items():
        if wanted.get(u["kind"]) or (u["kind"] == "block" and (
                ("first_block" in protect and u["block"] == min(blocks))
                or ("last_block" in protect and u["block"] == max(blocks)))):
            chosen.add(name)
    return chosen


def layer_kind(name: str, unit: dict) -> str:
    """"q_proj", "down_proj", ... for one linear, "block" for a whole block, "embed_tokens"."""
    return "block" if name == f"model.layers.{unit['block']}" else name.rsplit(".", 1)[-1]
