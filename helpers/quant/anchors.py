"""The anchors the allocation is compared with at equal size: uniform bits, mlx-lm's
rule-based recipe and its gradient-sensitivity allocation.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from helpers.core.cache import bytes_digest, content_key, load_json, save_json
from helpers.quant.calibration import tokens_hash
from helpers.quant.units import SCALE_BITS, protected_units, shapes_by_path, stored_bits

ANCHORS_VERSION = 1  # bump when the gradient scores would change: old cache entries are ignored


def rule_based_bits(model: nn.Module, units: dict, recipe: str = "mixed_4_6",
                    group_size: int = 64, protect=(), high_bits: int = 8) -> dict:
    """A no-measurement baseline: mlx-lm's mixed recipe (like llama.cpp's Q4_K_M: more bits for
    v_proj and down_proj in the first and last eighth of the blocks and every third block in
    between), with `protect`ed units raised to `high_bits`."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.convert import mixed_quant_predicate_builder

    rule = mixed_quant_predicate_builder(recipe, model, group_size)
    modules = dict(model.named_modules())
    bits = {p: rule(p, modules[p])["bits"] for u in units.values() for p in u["paths"]}
    for name in protected_units(units, protect):
        bits.update({p: high_bits for p in units[name]["paths"]})
    return bits


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter: the same digest means the same model, whatever it was loaded as."""
    def chunks():
        for name, value in tree_flatten(model.parameters()):
            wide = value.astype(mx.float32) if value.dtype == mx.bfloat16 else value  # no bf16 in numpy
            yield name.encode() + np.array(wide).tobytes()

    return bytes_digest(chunks())


def gradient_scores(model: nn.Module, tokens: mx.array, low_bits: int, high_bits: int,
                    group_size: int, batch_rows: int = 4, cache_path=None) -> dict:
    """{path: score} from mlx-lm's dynamic_quant: the gradient of KL(reference || all layers at
    `low_bits`) dotted with (W_low - W_high), per million weights: a first-order estimate of the
    KL that raising the layer from low to high bits removes. One forward and backward pass.
    With `cache_path` (a JSON cache file, helpers.core.cache), scores of the same weights, tokens
    and bits are read back instead (notebook 02 computes the pair that notebook 03 needs at the target)."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities

    def measure():
        return {path: float(score) for path, score in estimate_sensitivities(
            model, tokens, low_bits, group_size, high_bits, group_size, batch_size=batch_rows)}

    if not cache_path:
        return measure()
    key = content_key("gradient-scores", ANCHORS_VERSION, weights=weights_digest(model),
                      tokens=tokens_hash(tokens), low_bits=low_bits, high_bits=high_bits,
                      group_size=group_size)
    scores = load_json(cache_path, key)
    if scores is None:
        scores = measure()
        save_json(cache_path, key, scores)
    return scores


def bracketing_bits(target_bpw: float, candidate_bits, group_size: int) -> tuple[int, int]:
    """(low, high): the candidate bit-widths just below and just above the target's stored bpw,
    so that a two-level recipe can reach the target (at 4.5 bpw, 4-bit is uniform: (3, 5))."""
    cost = {b: b + 2 * SCALE_BITS / group_size for b in candidate_bits}
    below = [b for b in candidate_bits if cost[b] < target_bpw]
    above = [b for b in candidate_bits if cost[b] > target_bpw]
    if not below or not above:
        raise ValueError(f"target {target_bpw} bpw is not between two of the candidate bit-widths "
                         f"{sorted(candidate_bits)} (stored bpw {sorted(cost.values())})")
    return max(below), min(above)


def allocate_by_score(units: dict, scores: dict, target_bpw: float, low_bits: int,
                      high_bits: int, group_size: int, protect=()) -> dict:
    """mlx-lm's two-level recipe with our budget and accounting: every layer at low_bits
    (protected units at high_bits), then layers in decreasing score are raised to high_bits
    while the stored bits stay within the budget. (mlx-lm stops at a score threshold found by
    bisection on its own bpw count; filling the budget is the same order, no less spent.)"""
    shapes = shapes_by_path(units)
    fixed = {p for name in protected_units(units, protect) for p in units[name]["paths"]}
    bits = {p: high_bits if p in fixed else low_bits for p in shapes}
    budget = target_bpw * sum(r * c for r, c in shapes.values())
    spent = sum(stored_bits(shapes[p], b, group_size) for p, b in bits.items())
    if spent > budget:
        raise ValueError(f"target {target_bpw} bpw is below what {low_bits}-bit layers with "
                         f"protections {tuple(protect)} need")
    for path in sorted(shapes, key=lambda p: -scores[p]):
        extra = stored_bits(shapes[path], high_bits, group_size) - stored_bits(
            shapes[path], bits[path], group_size)
        if 0 < extra and spent + extra <= budget:
            bits[path], spent = high_bits, spent + extra
    return bits


def uniform_at(units: dict, target_bpw: float, candidate_bits, groups=(32, 64, 128)):
    """(bits, group size) of a uniform quantization that stores exactly target_bpw, or None:
    4.5 is 4-bit in groups of 64, 5.0 is 4-bit in groups of 32."""
    cols = {s[1] for u in units.values() for s in u["shapes"]}
    for g in groups:
        for b in sorted(candidate_bits):
            if all(c % g == 0 for c in cols) and b + 2 * SCALE_BITS / g == target_bpw:
                return b, g
    return None

ANCHORS = ("uniform", "rule mixed_4_6", "gradient (mlx-lm)")


def gradient_anchor(model, tokens, targets, candidate_bits, group_size, cache_path=None) -> dict:
    """{(low, high): gradient scores} for the bracketing bit-widths of every target."""
    pairs = {bracketing_bits(t, candidate_bits, group_size) for t in targets}
    return {pair: gradient_scores(model, tokens, *pair, group_size, cache_path=cache_path)
            for pair in sorted(pairs)}
