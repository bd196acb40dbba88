"""GPTQ rounding for every unit of a model (helpers/quant/gptq.py holds the
algorithm for one layer), and how much less error it leaves than
round-to-nearest, per unit and bit-width.
"""
from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn

from helpers.quant import gptq
from helpers.quant.anchors import weights_digest
from helpers.quant.calibration import tokens_hash
from helpers.quant.gptq import TIED_OUTPUT
from helpers.quant.kl import fake_quantize


class GPTQRounding:
    """GPTQ-rounded layers on demand, for any {path: bits}: one pass of the reference model
    records every block linear's input Hessian; each (layer, bits) is rounded once and kept.
    A tied embedding is rounded as the output layer (H of the final norm's output): its lookup
    error is not in GPTQ's objective, but the KL measured on the whole model counts both, and at
    4 bits GPTQ there lowers it far more than the lookup loses. An untied embedding stays
    round-to-nearest: a lookup table only.

    Hessians and rounded layers are shared with the last GPTQRounding made on the same weights,
    calibration tokens and damping, so that rerunning a notebook cell does not redo them;
    `rounding_seconds` still counts what the layers this object handed out cost to round."""

    _last: dict = {}  # {key: shared state}, one entry: the memory of one model's roundings

    def __init__(self, model: nn.Module, tokens: mx.array, group_size: int, damp: float = 0.01):
        modules = dict(model.named_modules())
        paths = [p for p, m in modules.items() if isinstance(m, nn.Linear)]
        paths += [gptq.TIED_OUTPUT] * gptq.ties_embeddings(model)
        self.weights = {p: modules[p].weight for p in paths}  # as they are now, unrounded
        key = f"{weights_digest(model)}-{tokens_hash(tokens)}-{damp!r}"
        if key not in GPTQRounding._last:
            start = time.perf_counter()
            hessians = gptq.layer_hessians(model, tokens, paths)
            GPTQRounding._last = {key: {"hessians": hessians, "rounded": {}, "seconds": {},
                                        "factors": {}, "hessian_seconds": time.perf_counter() - start}}
        shared = GPTQRounding._last[key]
        self.hessians, self.hessian_seconds = shared["hessians"], shared["hessian_seconds"]
        self.rounded, self.seconds, self.factors = shared["rounded"], shared["seconds"], shared["factors"]
        self.group_size, self.damp, self.used = group_size, damp, set()

    @property
    def rounding_seconds(self) -> float:
        return sum(self.seconds[k] for k in self.used)

    def stored(self, bits_by_path: dict, group_size: int | None = None) -> dict:
        """{path: {"weight", "scales", "biases", "dequantized"}} for the layers GPTQ covers."""
        group = group_size or self.group_size
        out = {}
        for path, bits in bits_by_path.items():
            if path not in self.hessians:
                continue
            key = (path, bits, group)
            if key not in self.rounded:
                start = time.perf_counter()
                hessian = self.hessians[path]  # shared by the layers reading the same input
                if id(hessian) not in self.factors:
                    self.factors[id(hessian)] = gptq.inverse_hessian_factor(hessian, self.damp)
                self.rounded[key] = gptq.gptq_quantize(
                    self.weights[path], hessian, bits, group, self.damp, self.factors[id(hessian)])
                self.seconds[key] = time.perf_counter() - start
            self.used.add(key)
            out[path] = self.rounded[key]
        return out

    def plan(self, bits_by_path: dict, group_size: int | None = None) -> dict:
        """A `compare` plan: these bits, GPTQ's dequantized weights where it applies."""
        group = group_size or self.group_size
        weights = {p: a["dequantized"] for p, a in self.stored(bits_by_path, group).items()}
        return {"bits": bits_by_path, "group_size": group, "weights": weights}


def gptq_error_ratios(rounding: GPTQRounding, units: dict, candidate_bits) -> dict:
    """{unit: {bits: r}}, r = GPTQ's output error over round-to-nearest's, tr(ΔW H ΔWᵀ) summed
    over the unit's layers (H = XᵀX of the calibration inputs); 1 for the embedding, whose lookup
    error that ratio would leave out. GPTQ helps some layers far more than others, which the
    RTN-measured KLs miss."""
    hessians = {}  # as MLX arrays, once: layers reading the same input share one

    def output_error(path, approx) -> float:
        key = id(rounding.hessians[path])
        if key not in hessians:
            hessians[key] = mx.array(rounding.hessians[path])
        h = hessians[key]
        delta = approx - rounding.weights[path]
        return mx.sum((delta @ h) * delta).item()

    ratios = {name: {} for name in units}
    for bits in candidate_bits:
        stored = rounding.stored({p: bits for u in units.values() for p in u["paths"]})
        for name, unit in units.items():
            covered = [p for p in unit["paths"] if p in stored and p != TIED_OUTPUT]
            gptq = sum(output_error(p, stored[p]["dequantized"]) for p in covered)
            rtn = sum(output_error(p, fake_quantize(rounding.weights[p], bits, rounding.group_size))
                      for p in covered)
            ratios[name][bits] = gptq / rtn if rtn else 1.0
    return ratios


def gptq_aware(sens: dict, ratios: dict) -> dict:
    """The sensitivity table with each unit's KL at each bit-width scaled by its GPTQ error ratio:
    the knapsack then spends bits where they help after GPTQ rounding, not after RTN."""
    scaled = {name: {b: {k: (v * ratios[name].get(int(b), 1.0) if k in ("mean", "median", "p95") else v)
                         for k, v in entry.items()} for b, entry in by_bits.items()}
              for name, by_bits in sens["kl"].items()}
    return {**sens, "kl": scaled}
