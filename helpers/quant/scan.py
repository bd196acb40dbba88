"""The sensitivity scan: quantize one unit at a time and measure the KL it costs. The
bit-widths in cfg.scan_bits are measured and the others predicted from the weight
error (corrected per layer kind from a few measurements); results are cached.
"""
from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from helpers.core.cache import content_key, load_json, save_json
from helpers.core.io import atomic_write_json, read_json
from helpers.quant.calibration import preset_calibration, tokens_hash
from helpers.quant.kl import Reference, fake_quantize, fake_quantized, kl_stats
from helpers.quant.units import layer_kind, quant_units

SCAN_VERSION = 1  # bump when the scan's numbers would change, so old cache entries are ignored


def measure_units(model, ref: Reference, units: dict, bits: int, group_size: int,
                  cache_path=None, cache_key: str = "", progress: bool = True,
                  reuse: bool = True) -> dict:
    """{unit: KL stats} with only that unit quantized to `bits`. Units already in the cache
    file's entry `cache_key` (helpers.core.cache) are reused (unless reuse=False); new ones are
    added to it as they come, so an interrupted scan resumes where it stopped."""
    done = (load_json(cache_path, cache_key) or {}) if cache_path and reuse else {}
    todo = [name for name in units if name not in done]
    for name in tqdm(todo, desc=f"{bits}-bit scan", disable=not progress or not todo):
        unit = units[name]
        with fake_quantized(model, {p: bits for p in unit["paths"]}, group_size):
            done[name] = kl_stats(ref.kl_from(model, unit["block"]))
        if cache_path:
            save_json(cache_path, cache_key, done)
    return {name: done[name] for name in units}


def scan_key(cfg, calib: str, bits: int, what: str) -> str:
    """The cache key of one table of the scan: `what` is "kl" (measured), "fit" (the sample
    measured to correct the predictions) or "weight-error"."""
    return content_key("sensitivity", SCAN_VERSION, model=cfg.model, reference="dequantized",
                       calibration=calib if what != "weight-error" else None,
                       group_size=cfg.group_size, bits=bits, table=what)


def quantization_error(model, units: dict, bits: int, group_size: int) -> dict:
    """{unit: squared Frobenius error of its fake-quantized weights}."""
    modules = dict(model.named_modules())
    errors = {}
    for name, unit in units.items():
        total = 0.0
        for path in unit["paths"]:
            w = modules[path].weight
            total += mx.sum(mx.square(fake_quantize(w, bits, group_size) - w)).item()
        errors[name] = total
    return errors


def sensitivity_scan(cfg, model, tokenizer, progress: bool = True,
                     reuse_cache: bool = True) -> dict:
    """Per-(unit, bits) KL for every candidate bit-width of cfg, as one JSON-ready dict.

    Bit-widths in cfg.scan_bits are measured. The others are predicted from the nearest measured
    one: for small perturbations KL grows with the square of the weight error, so
    KL(b) = KL(b0) * |W - Q_b(W)|^2 / |W - Q_b0(W)|^2 (notebook 02 checks this on a sample)."""
    start = time.perf_counter()
    tokens = preset_calibration(cfg, tokenizer)
    units = quant_units(model, cfg.scan_granularity, cfg.group_size)
    measured = sorted(set(cfg.scan_bits))
    candidates = sorted(set(cfg.candidate_bits) | set(measured))
    calib = tokens_hash(tokens)
    cache_path = cfg.path("sensitivity_cache.json")
    ref = None
    kl = {name: {} for name in units}
    for bits in measured:
        key = scan_key(cfg, calib, bits, "kl")
        cached = (load_json(cache_path, key) or {}) if reuse_cache else {}
        if ref is None and any(name not in cached for name in units):
            ref = Reference(model, tokens)
        table = measure_units(model, ref, units, bits, cfg.group_size, cache_path, key, progress,
                              reuse_cache)
        for name, stats in table.items():
            kl[name][str(bits)] = {**stats, "measured": True}
    errors = {}  # weight errors are cached too, so a rerun is instant
    for bits in candidates if set(candidates) - set(measured) else []:
        key = scan_key(cfg, calib, bits, "weight-error")
        errors[bits] = load_json(cache_path, key) if reuse_cache else None
        if not set(units) <= set(errors[bits] or {}):
            errors[bits] = quantization_error(model, units, bits, cfg.group_size)
            save_json(cache_path, key, errors[bits])
    for bits in candidates:
        if bits in measured:
            continue
        nearest = min(measured, key=lambda m: (abs(m - bits), -m))
        for name in units:
            ratio = errors[bits][name] / max(errors[nearest][name], 1e-30)
            kl[name][str(bits)] = {k: v * ratio for k, v in kl[name][str(nearest)].items()
                                   if k != "measured"} | {"measured": False}
    for bits in cfg.scan_fit_bits:
        if bits in measured or bits not in candidates:
            raise ValueError(f"scan_fit_bits {bits} must be a predicted candidate bit-width "
                             f"(candidates {candidates}, measured {measured})")
        key = scan_key(cfg, calib, bits, "fit")
        sample = fit_sample(units, cfg.scan_fit_units)
        cached = (load_json(cache_path, key) or {}) if reuse_cache else {}
        if ref is None and any(n not in cached for names in sample.values() for n in names):
            ref = Reference(model, tokens)
        table = measure_units(model, ref, {n: units[n] for names in sample.values() for n in names},
                              bits, cfg.group_size, cache_path, key, progress, reuse_cache)
        fit_per_kind(kl, units, sample, table, bits)
    return {
        "model": cfg.model, "reference": "float32, every quantized layer dequantized",
        "calibration": {"hash": calib, "rows": int(tokens.shape[0]),
                        "tokens_per_row": int(tokens.shape[1])},
        "group_size": cfg.group_size, "granularity": cfg.scan_granularity,
        "measured_bits": measured, "candidate_bits": candidates,
        "fit_bits": list(cfg.scan_fit_bits), "fit_units_per_kind": cfg.scan_fit_units,
        "units": units, "kl": kl,
        "scan_seconds": round(time.perf_counter() - start, 1),
    }


def fit_sample(units: dict, per_kind: int) -> dict:
    """{kind: units}: `per_kind` units of each layer kind, spread evenly over depth."""
    by_kind = {}
    for name, unit in units.items():
        by_kind.setdefault(layer_kind(name, unit), []).append(name)
    picks = {}
    for kind, names in by_kind.items():
        idx = np.unique(np.round(np.linspace(0, len(names) - 1, min(per_kind, len(names)))))
        picks[kind] = [names[int(i)] for i in idx]
    return picks


def fit_per_kind(kl: dict, units: dict, sample: dict, measured: dict, bits: int) -> None:
    """Correct the predicted KLs at `bits`, in place: each kind's predictions are multiplied by
    the geometric mean of measured / predicted over its sampled units (which keep their measured
    values). The squared-error rule misses how each kind's outliers behave; the factor keeps the
    kind's own depth profile. The uncorrected prediction is kept as "unfitted_mean"."""
    key = str(bits)
    for kind, names in sample.items():
        factor = float(np.exp(np.mean([np.log(max(measured[n]["mean"], 1e-30)
                                               / max(kl[n][key]["mean"], 1e-30)) for n in names])))
        for name, unit in units.items():
            if layer_kind(name, unit) != kind:
                continue
            entry = kl[name][key]
            fitted = (measured[name] | {"measured": True} if name in names else
                      {k: v * factor for k, v in entry.items() if k in ("mean", "median", "p95")}
                      | {"measured": False})
            kl[name][key] = fitted | {"unfitted_mean": entry["mean"], "kind_factor": factor}


def check_predictions(cfg, model, tokenizer, sens: dict, names: list[str], bits_list) -> list[dict]:
    """Measure `names` at bit-widths the scan predicted, to see how good the prediction is."""
    ref = Reference(model, preset_calibration(cfg, tokenizer))
    rows = []
    for bits in bits_list:
        measured = measure_units(model, ref, {n: sens["units"][n] for n in names}, bits,
                                 sens["group_size"], progress=False)
        for name in names:
            entry = sens["kl"][name][str(bits)]
            row = {"unit": name, "bits": bits, "measured KL": measured[name]["mean"],
                   "predicted KL": entry["mean"],
                   "predicted / measured": entry["mean"] / measured[name]["mean"]}
            if "unfitted_mean" in entry:  # the same check before the per-kind correction
                row["before correction / measured"] = entry["unfitted_mean"] / row["measured KL"]
            rows.append(row)
    return rows


def save_sensitivity(cfg, sens: dict) -> Path:
    path = cfg.path("sensitivity.json")
    atomic_write_json(path, sens)
    return path


def load_sensitivity(cfg) -> dict:
    path = cfg.input_path("sensitivity.json")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run notebook 02_sensitivity.ipynb with "
                                f"preset {cfg.preset!r} first")
    return read_json(path)


def predicted_kl(sens: dict, bits_by_path: dict) -> float:
    """Sum of per-unit KLs (units measured one at a time): the allocator's estimate of the KL
    of the whole mixed model. NaN when a unit's layers have different bit-widths (a rule-based
    recipe scanned per block) or a bit-width is not in the table."""
    total = 0.0
    for name, unit in sens["units"].items():
        unit_bits = {bits_by_path[p] for p in unit["paths"]}
        entry = sens["kl"][name].get(str(unit_bits.pop())) if len(unit_bits) == 1 else None
        if entry is None:
            return float("nan")
        total += entry["mean"]
    return total


def sensitivity_table(sens: dict, bits: int):
    """A DataFrame, one row per unit: block, layer kind, weights, mean/median/p95 KL at `bits`."""
    # deferred: pandas is slow to import, and only this path needs it
    import pandas as pd

    rows = []
    for name, unit in sens["units"].items():
        stats = sens["kl"][name][str(bits)]
        kind = layer_kind(name, unit)
        rows.append({"unit": name, "block": unit["block"], "kind": kind,
                     "weights": unit["n_weights"], "mean": stats["mean"],
                     "median": stats["median"], "p95": stats["p95"],
                     "measured": stats["measured"]})
    return pd.DataFrame(rows)
