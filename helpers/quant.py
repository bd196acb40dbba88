"""KL-sensitivity-aware mixed-precision quantization (notebooks 02 and 03).

Read top to bottom:
1. units: the weight matrices that get one bit-width each (every linear layer, or every block),
   and the exact storage a quantized matrix takes (packed weights + float16 scales and biases).
2. calibration: a fixed, documented mix of texts the sensitivity is measured on.
3. scan: quantize one unit at a time and measure KL(reference || quantized) of the next-token
   distributions on the calibration tokens. The forward pass restarts at the unit's block from
   cached hidden states, weights are fake-quantized (dequantize(quantize(W)) in float32), the
   bit-widths in cfg.scan_bits are measured and the others predicted from the weight error, and
   the results are cached as JSON, so a rerun is instant.
4. allocation: a greedy multiple-choice knapsack spends a bits-per-weight budget where it buys
   the most KL reduction per stored bit; a rule-based recipe from mlx-lm is the baseline.
5. apply and save in mlx-lm's own format; evaluate (KL, perplexity, size, decode speed).

The reference is the model in float32 with every quantized layer dequantized
(`load_model(cfg.model, keep_quantized=False)`).
"""
from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

from .io import atomic_write_json, read_json

SCAN_VERSION = 1  # bump when the scan's numbers would change, so old cache entries are ignored
SCALE_DTYPE = mx.float16  # scales and biases are stored in 16 bits, as mlx-lm does (it uses the
# model's dtype, usually bfloat16); float16 keeps 3 more mantissa bits for the same storage
SCALE_BITS = 16
PROTECTIONS = ("lm_head", "embeddings", "first_block", "last_block")


# ----------------------------------------------------------------------------------------------
# 1. units and storage

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


# ----------------------------------------------------------------------------------------------
# 2. calibration

PROSE_FILE = Path(__file__).resolve().parent.parent / "data" / "calibration_prose.txt"


def calibration_texts(train_rows: list[dict]) -> list[str]:
    """The calibration mix, in order: for each training row its human text then its AI text,
    and after every second row one paragraph of generic prose (data/calibration_prose.txt).
    So 4 of every 5 documents come from the training split (half human, half AI) and 1 in 5 is
    generic prose."""
    prose = [p.strip() for p in PROSE_FILE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    docs = []
    for i, row in enumerate(train_rows):
        docs += [row["human"], row["ai"]]
        if i % 2 == 1:
            docs.append(prose[(i // 2) % len(prose)])
    return docs


def calibration_tokens(texts: list[str], tokenizer, rows: int, row_tokens: int) -> mx.array:
    """(rows, row_tokens) token ids. Each row starts at a new document (so the rows cover as many
    documents as possible) and, when that document is short, continues into the next ones,
    separated by EOS. No padding: every position counts."""
    docs = iter(texts)
    out = []
    while len(out) < rows:
        row = []
        while len(row) < row_tokens:
            doc = next(docs, None)
            if doc is None:
                raise ValueError(f"Calibration needs {rows} rows of {row_tokens} tokens, the "
                                 f"texts fill {len(out)}; lower calib_texts or calib_max_tokens")
            row += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append(row[:row_tokens])
    return mx.array(out)


def preset_calibration(cfg, tokenizer) -> mx.array:
    """The preset's calibration tokens: calib_texts rows of calib_max_tokens tokens from the mix
    built on the training split that notebook 01 wrote."""
    from .data import load_prepared

    texts = calibration_texts(load_prepared(cfg)["train"])
    return calibration_tokens(texts, tokenizer, cfg.calib_texts, cfg.calib_max_tokens)


def tokens_hash(tokens: mx.array) -> str:
    array = np.array(tokens, dtype=np.int64)
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# 3. fake quantization, forward from a block, KL

def fake_quantize(w: mx.array, bits: int, group_size: int) -> mx.array:
    """The weights a saved `bits`-bit model computes with, as a float32 matrix: quantize, round
    the scales and biases to their stored float16, dequantize."""
    q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    return mx.dequantize(q, scales.astype(SCALE_DTYPE).astype(w.dtype),
                         biases.astype(SCALE_DTYPE).astype(w.dtype),
                         group_size=group_size, bits=bits)


@contextmanager
def fake_quantized(model: nn.Module, bits_by_path: dict, group_size: int, weights=None):
    """Temporarily replace the weights of the given layers by their fake-quantized versions
    (round-to-nearest, or the given dequantized `weights` {path: matrix}, e.g. GPTQ's)."""
    modules = dict(model.named_modules())
    weights = weights or {}
    originals = {}
    try:
        for path, bits in bits_by_path.items():
            originals[path] = modules[path].weight
            modules[path].weight = (weights[path] if path in weights
                                    else fake_quantize(originals[path], bits, group_size))
        yield model
    finally:
        for path, weight in originals.items():
            modules[path].weight = weight


def lm_head(model: nn.Module, h: mx.array) -> mx.array:
    h = model.model.norm(h)
    return model.lm_head(h) if hasattr(model, "lm_head") else model.model.embed_tokens.as_linear(h)


def forward_from(model: nn.Module, h: mx.array, start: int) -> mx.array:
    """Logits from the hidden state entering block `start` (Llama-style: blocks, norm, head)."""
    for layer in model.layers[start:]:
        h = layer(h, "causal")
    return lm_head(model, h)


def _torch(a: mx.array):
    import torch
    return torch.from_numpy(np.array(a, dtype=np.float32))


def log_softmax(logits: mx.array):
    """Log-probabilities as a torch tensor (n_positions, vocab). The vocabulary-wide softmax runs
    in torch because MLX's CPU exp is several times slower than torch's vectorized one."""
    import torch
    logits = _torch(logits)
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)


def _rowdot(a, b):
    """Row-wise dot products of two (n, vocab) tensors, as one batched matmul (fast)."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


def next_token_dist(logits: mx.array) -> dict:
    """The reference's next-token distribution at every position: log p and p."""
    logp = log_softmax(logits)
    return {"logp": logp, "p": logp.exp()}


def token_kl(ref: dict, logits: mx.array, chunk: int = 512) -> np.ndarray:
    """KL(reference || model) = sum_v p_v (log p_v - log q_v) at every position, in nats.
    Exactly 0 when the logits are the reference's; below ~1e-6 it is float32 rounding noise."""
    logits = logits.reshape(-1, logits.shape[-1])
    return np.concatenate([kl_of_logq(ref, log_softmax(logits[i:i + chunk]), i)
                           for i in range(0, logits.shape[0], chunk)])


def kl_of_logq(ref: dict, logq, start: int = 0, chunk: int = 512) -> np.ndarray:
    """token_kl from the model's log-probabilities (torch, rows start.. of the reference's)."""
    return np.concatenate([_rowdot(ref["p"][start + i:start + i + chunk],
                                   ref["logp"][start + i:start + i + chunk] - logq[i:i + chunk]).numpy()
                           for i in range(0, logq.shape[0], chunk)])


class Reference:
    """One pass of the reference model over `tokens`, kept for every later measurement: the
    input of each block, and the next-token log-probabilities."""

    def __init__(self, model: nn.Module, tokens: mx.array):
        self.tokens = tokens
        self.hidden = [model.model.embed_tokens(tokens)]
        for layer in model.layers:
            self.hidden.append(layer(self.hidden[-1], "causal"))
            mx.eval(self.hidden[-1])
        logits = lm_head(model, self.hidden[-1])
        full = model(tokens)
        if not mx.allclose(logits, full, atol=1e-4).item():
            raise ValueError(f"{type(model).__module__}: restarting the forward pass at a block "
                             "does not reproduce the model's logits; the scan supports "
                             "Llama-style models (embeddings, blocks, norm, head)")
        self.dist = next_token_dist(logits)

    def kl_from(self, model: nn.Module, start: int) -> np.ndarray:
        """Per-token KL of the (perturbed) model against the reference, recomputing only from
        block `start` (-1: from the embeddings)."""
        h = model.model.embed_tokens(self.tokens) if start < 0 else self.hidden[start]
        return token_kl(self.dist, forward_from(model, h, max(start, 0)))


def kl_stats(kl: np.ndarray) -> dict:
    return {"mean": float(kl.mean()), "median": float(np.median(kl)),
            "p95": float(np.percentile(kl, 95))}


def measure_units(model, ref: Reference, units: dict, bits: int, group_size: int,
                  cache_path=None, cache_key: str = "", progress: bool = True,
                  reuse: bool = True) -> dict:
    """{unit: KL stats} with only that unit quantized to `bits`. Entries already in the cache
    file under `cache_key` are reused (unless reuse=False); new ones are written as they come, so
    an interrupted scan resumes where it stopped."""
    from tqdm.auto import tqdm

    cache = read_json(cache_path) if cache_path and Path(cache_path).exists() else {}
    if not reuse:
        cache[cache_key] = {}
    done = cache.setdefault(cache_key, {})
    todo = [name for name in units if name not in done]
    for name in tqdm(todo, desc=f"{bits}-bit scan", disable=not progress or not todo):
        unit = units[name]
        with fake_quantized(model, {p: bits for p in unit["paths"]}, group_size):
            done[name] = kl_stats(ref.kl_from(model, unit["block"]))
        if cache_path:
            atomic_write_json(cache_path, cache)
    return {name: done[name] for name in units}


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
        key = f"{cfg.model}|dequantized|calib={calib}|g{cfg.group_size}|b{bits}|v{SCAN_VERSION}"
        cached = read_json(cache_path).get(key, {}) if reuse_cache and cache_path.exists() else {}
        if ref is None and any(name not in cached for name in units):
            ref = Reference(model, tokens)
        table = measure_units(model, ref, units, bits, cfg.group_size, cache_path, key, progress,
                              reuse_cache)
        for name, stats in table.items():
            kl[name][str(bits)] = {**stats, "measured": True}
    errors = {}  # weight errors are cached too, so a rerun is instant
    for bits in candidates if set(candidates) - set(measured) else []:
        key = f"{cfg.model}|dequantized|weight-error|g{cfg.group_size}|b{bits}|v{SCAN_VERSION}"
        cache_file = read_json(cache_path) if cache_path.exists() else {}
        if not reuse_cache or not set(units) <= set(cache_file.get(key, {})):
            cache_file[key] = quantization_error(model, units, bits, cfg.group_size)
            atomic_write_json(cache_path, cache_file)
        errors[bits] = cache_file[key]
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
        key = f"{cfg.model}|dequantized|calib={calib}|g{cfg.group_size}|b{bits}|fit|v{SCAN_VERSION}"
        sample = fit_sample(units, cfg.scan_fit_units)
        cached = read_json(cache_path).get(key, {}) if reuse_cache and cache_path.exists() else {}
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


def layer_kind(name: str, unit: dict) -> str:
    """"q_proj", "down_proj", ... for one linear, "block" for a whole block, "embed_tokens"."""
    return "block" if name == f"model.layers.{unit['block']}" else name.rsplit(".", 1)[-1]


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


# ----------------------------------------------------------------------------------------------
# 3b. error-correcting rounding (GPTQ, helpers/gptq.py) for any allocation

def gptq_calibration(cfg, tokenizer) -> mx.array:
    """GPTQ's calibration rows: the same documented mix as the scan, more rows (a Hessian of
    d_in x d_in needs well over d_in tokens to be well conditioned)."""
    from .data import load_prepared

    texts = calibration_texts(load_prepared(cfg)["train"])
    return calibration_tokens(texts, tokenizer, cfg.gptq_calib_texts, cfg.gptq_calib_tokens)


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
        from . import gptq

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
        from . import gptq

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
    from .gptq import TIED_OUTPUT

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


# ----------------------------------------------------------------------------------------------
# 4. allocation

def allocate(sens: dict, target_bpw: float, candidate_bits, protect=()) -> dict:
    """{path: bits} with stored bits per weight <= target_bpw, minimising the summed per-unit KL.

    Greedy multiple-choice knapsack: every unit starts at the lowest candidate bit-width
    (protected units at the highest); then, while the budget allows, the single upgrade (unit,
    higher bit-width) with the largest KL reduction per extra stored bit is taken."""
    units, group = sens["units"], sens["group_size"]
    bits = sorted(candidate_bits)
    missing = [b for b in bits if str(b) not in next(iter(sens["kl"].values()))]
    if missing:
        raise ValueError(f"sensitivity has no KL for bit-width(s) {missing}; rerun the scan "
                         "with them in candidate_bits")
    fixed = protected_units(units, protect)
    kl = {u: {b: sens["kl"][u][str(b)]["mean"] for b in bits} for u in units}
    cost = {u: {b: sum(stored_bits(s, b, group) for s in units[u]["shapes"]) for b in bits}
            for u in units}
    choice = {u: bits[-1] if u in fixed else bits[0] for u in units}
    budget = target_bpw * sum(u["n_weights"] for u in units.values())
    spent = sum(cost[u][choice[u]] for u in units)
    if spent > budget:
        raise ValueError(f"target {target_bpw} bpw is below the {spent / budget * target_bpw:.3f}"
                         f" bpw that bits {bits} with protections {tuple(protect)} need at least")
    while True:
        best = None  # (KL reduction per extra bit, unit, bits, extra bits)
        for u in units:
            if u in fixed:
                continue
            for b in bits:
                extra = cost[u][b] - cost[u][choice[u]]
                if extra > 0 and spent + extra <= budget:
                    rate = (kl[u][choice[u]] - kl[u][b]) / extra
                    if best is None or rate > best[0]:
                        best = (rate, u, b, extra)
        if best is None or best[0] <= 0:
            break
        _, u, b, extra = best
        choice[u] = b
        spent += extra
    return {p: choice[u] for u in units for p in units[u]["paths"]}


def rule_based_bits(model: nn.Module, units: dict, recipe: str = "mixed_4_6",
                    group_size: int = 64, protect=(), high_bits: int = 8) -> dict:
    """A no-measurement baseline: mlx-lm's mixed recipe (like llama.cpp's Q4_K_M: more bits for
    v_proj and down_proj in the first and last eighth of the blocks and every third block in
    between), with `protect`ed units raised to `high_bits`."""
    from mlx_lm.convert import mixed_quant_predicate_builder

    rule = mixed_quant_predicate_builder(recipe, model, group_size)
    modules = dict(model.named_modules())
    bits = {p: rule(p, modules[p])["bits"] for u in units.values() for p in u["paths"]}
    for name in protected_units(units, protect):
        bits.update({p: high_bits for p in units[name]["paths"]})
    return bits


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter: the same digest means the same model, whatever it was loaded as."""
    digest = hashlib.sha1()
    for name, value in tree_flatten(model.parameters()):
        wide = value.astype(mx.float32) if value.dtype == mx.bfloat16 else value  # numpy has no bf16
        digest.update(name.encode() + np.array(wide).tobytes())
    return digest.hexdigest()[:16]


def gradient_scores(model: nn.Module, tokens: mx.array, low_bits: int, high_bits: int,
                    group_size: int, batch_rows: int = 4, cache_path=None) -> dict:
    """{path: score} from mlx-lm's dynamic_quant: the gradient of KL(reference || all layers at
    `low_bits`) dotted with (W_low - W_high), per million weights: a first-order estimate of the
    KL that raising the layer from low to high bits removes. One forward and backward pass.
    With `cache_path` (a JSON file), scores of the same weights, tokens and bits are read back
    instead (notebook 02 computes the pair that notebook 03 needs at the target)."""
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities

    def measure():
        return {path: float(score) for path, score in estimate_sensitivities(
            model, tokens, low_bits, group_size, high_bits, group_size, batch_size=batch_rows)}

    if not cache_path:
        return measure()
    key = f"{weights_digest(model)}-{tokens_hash(tokens)}-{low_bits}-{high_bits}-{group_size}"
    cache = read_json(cache_path) if Path(cache_path).exists() else {}
    if key not in cache:
        cache[key] = measure()
        atomic_write_json(cache_path, cache)
    return cache[key]


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


def equal_size_methods(model, sens: dict, targets, candidate_bits, rounding=None,
                       gradient=None, protect=(), gptq_ratios=None) -> list[dict]:
    """Every method at every target bpw, as rows {"method", "target", "plan"} for `compare`:
    uniform round-to-nearest (where a uniform bit-width and group size store exactly the
    target), the rule-based mixed_4_6 recipe (at its own bpw, with our methods beside it there),
    mlx-lm's gradient-sensitivity allocation (`gradient` {(low, high): scores}), our KL
    knapsack, and with `rounding` (GPTQRounding) uniform and knapsack with GPTQ rounding; with
    `gptq_ratios` (gptq_error_ratios) also the GPTQ-aware knapsack with GPTQ rounding."""
    units, group = sens["units"], sens["group_size"]
    rule = rule_based_bits(model, units, "mixed_4_6", group, protect)
    rows = [{"method": "rule mixed_4_6", "target": round(bits_per_weight(rule, units, group), 3),
             "plan": rule}]
    clock = time.perf_counter()

    def add(method, target, plan):  # seconds: building this plan, past the shared passes
        nonlocal clock
        rows.append({"method": method, "target": target, "plan": plan,
                     "seconds": time.perf_counter() - clock})
        clock = time.perf_counter()

    for target in sorted(targets) + [rows[0]["target"]]:
        uniform = uniform_at(units, target, candidate_bits) if target in targets else None
        if uniform:
            bits = uniform_bits(units, uniform[0])
            add("uniform", target, {"bits": bits, "group_size": uniform[1]})
            if rounding is not None:
                add("uniform + GPTQ", target, rounding.plan(bits, uniform[1]))
        if gradient is not None and target in targets:
            low, high = bracketing_bits(target, candidate_bits, group)
            add("gradient (mlx-lm)", target, allocate_by_score(
                units, gradient[low, high], target, low, high, group, protect))
        knapsack = allocate(sens, target, candidate_bits, protect)
        add("KL knapsack", target, knapsack)
        if rounding is not None:
            add("KL knapsack + GPTQ", target, rounding.plan(knapsack))
        if rounding is not None and gptq_ratios is not None:
            aware = allocate(gptq_aware(sens, gptq_ratios), target, candidate_bits, protect)
            add(GPTQ_AWARE, target, rounding.plan(aware))
    rows[0]["seconds"] = 0.0
    return rows


ANCHORS = ("uniform", "rule mixed_4_6", "gradient (mlx-lm)")
GPTQ_AWARE = "GPTQ-aware knapsack + GPTQ"


def gradient_anchor(model, tokens, targets, candidate_bits, group_size, cache_path=None) -> dict:
    """{(low, high): gradient scores} for the bracketing bit-widths of every target."""
    pairs = {bracketing_bits(t, candidate_bits, group_size) for t in targets}
    return {pair: gradient_scores(model, tokens, *pair, group_size, cache_path=cache_path)
            for pair in sorted(pairs)}


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


# ----------------------------------------------------------------------------------------------
# 5. apply, save, evaluate

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


def heldout_texts(cfg) -> list[str]:
    """Human paragraphs of the validation split (never used for calibration or training)."""
    from .data import load_prepared

    val = load_prepared(cfg)["val"]
    texts = list(dict.fromkeys(r["human"] for r in val))  # one per paragraph
    return texts[:cfg.quant_eval_texts]


def preset_heldout(cfg, model, tokenizer) -> "HeldOut":
    return HeldOut(model, tokenizer, heldout_texts(cfg), cfg.quant_eval_max_tokens)


class HeldOut:
    """Held-out texts, right-padded into one batch, with the reference's log-probabilities."""

    def __init__(self, model, tokenizer, texts: list[str], max_tokens: int):
        ids = [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] for t in texts]
        width = max(len(i) for i in ids)
        self.tokens = mx.array([i + [tokenizer.eos_token_id] * (width - len(i)) for i in ids])
        # position t predicts token t+1: count it only when that token is real text
        self.mask = np.array([[t + 1 < len(i) for t in range(width)] for i in ids])
        self.ref = next_token_dist(model(self.tokens))

    def evaluate(self, model) -> dict:
        """Per-text mean KL against the reference and per-text mean NLL of the text itself."""
        logq = log_softmax(model(self.tokens))  # one softmax for both the KL and the NLL
        kl = kl_of_logq(self.ref, logq).reshape(self.mask.shape)
        logq = logq.reshape(*self.mask.shape, -1)
        targets = _torch(self.tokens).long()[:, 1:]
        nll = -logq[:, :-1].gather(-1, targets[..., None])[..., 0].numpy()
        nll = np.concatenate([nll, np.zeros((nll.shape[0], 1), np.float32)], axis=1)
        n = self.mask.sum(1)
        return {"kl_per_text": (kl * self.mask).sum(1) / n,
                "nll_per_text": (nll * self.mask).sum(1) / n, "tokens_per_text": n}


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% bootstrap CI over independent units (texts): the series' one CI function."""
    from .metrics import bootstrap_ci

    ci = bootstrap_ci(values)
    return ci["mean"], ci["lo"], ci["hi"]


def summarize(result: dict) -> dict:
    """Mean KL with its CI over texts, and perplexity exp(token-weighted NLL) with a CI from the
    per-text NLLs."""
    kl, kl_lo, kl_hi = mean_ci(result["kl_per_text"])
    weights = result["tokens_per_text"] / result["tokens_per_text"].sum()
    nll = float((result["nll_per_text"] * weights).sum())
    _, nll_lo, nll_hi = mean_ci(result["nll_per_text"])
    return {"kl": kl, "kl_lo": kl_lo, "kl_hi": kl_hi, "ppl": math.exp(nll),
            "ppl_lo": math.exp(nll_lo), "ppl_hi": math.exp(nll_hi)}


def compare(model, held: HeldOut, sens: dict, configs: dict, progress: bool = True):
    """One row per configuration, {name: {path: bits}} or {name: plan} with plan = {"bits":
    {path: bits}, "group_size": g (default the scan's), "weights": {path: dequantized matrix}
    (default round-to-nearest)}: bpw and weight MB (the same accounting for every method),
    predicted KL, and the held-out KL (vs the reference; also per text, for paired comparisons)
    and perplexity, measured with fake-quantized weights."""
    import pandas as pd
    from tqdm.auto import tqdm

    units = sens["units"]
    rows = []
    for name, plan in tqdm(configs.items(), desc="evaluating", disable=not progress):
        bits, group = (plan["bits"], plan.get("group_size", sens["group_size"])) if "bits" in plan \
            else (plan, sens["group_size"])
        start = time.perf_counter()
        with fake_quantized(model, bits, group, plan.get("weights") if "bits" in plan else None):
            per_text = held.evaluate(model)
        result = summarize(per_text) | {"kl_per_text": per_text["kl_per_text"].tolist()}
        result["eval s"] = time.perf_counter() - start
        rows.append({"config": name, "bpw": bits_per_weight(bits, units, group),
                     "MB": expected_bytes(model, units, bits, group) / 2**20,
                     "predicted KL": predicted_kl(sens, bits) if group == sens["group_size"]
                     else float("nan"), **result})
    return pd.DataFrame(rows)


def speed_prompt(cfg, tokenizer, words: int = 20) -> str:
    """The start of a held-out paragraph, as plain text to continue: quantized prefill is slow
    on CPU, and decode speed barely depends on the prompt at these lengths."""
    return " ".join(heldout_texts(cfg)[0].split()[:words])


def decode_speed(model, tokenizer, prompt: str, max_tokens: int) -> dict:
    """Greedy generation speed (tokens/s) for prompt processing and decoding."""
    from mlx_lm import stream_generate

    last = None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        pass
    return {"prefill_tok_s": last.prompt_tps, "decode_tok_s": last.generation_tps,
            "generated": last.generation_tokens}
