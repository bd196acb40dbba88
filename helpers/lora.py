"""LoRA adapters on a frozen base: the SFT adapter, a DPO adapter stacked on it, and their exact merge.

Every adapter is saved in mlx-lm's format (adapters.safetensors + adapter_config.json), so
`mlx_lm.load(base, adapter_path=...)` and the mlx_lm command-line tools read it unchanged.

A stacked layer computes  y = base(x) + s1·(x·A1)·B1   (SFT: mlx-lm's `lora_a`, `lora_b`)
                                     + s2·(x·A2)·B2   (DPO: `dpo_a`, `dpo_b`),  each term switchable.
Since  s1·(x·A1)·B1 + s2·(x·A2)·B2 = (x·[A1 A2])·[s1·B1 ; s2·B2],  the two adapters are exactly one
LoRA of rank r1 + r2 and scale 1: `merged_adapter_weights` builds it.

Fake quantization: on a CPU, MLX's quantized matmul is several times slower than an fp32 matmul
through OpenBLAS (notebook 04 measures it). With `cfg.fake_quant` the quantized base is dequantized
once after loading; dequantize(W_q) holds exactly the values the quantized layer multiplies with, so
training and inference compute the same function (up to fp32 summation order), faster. What is
stored on disk stays quantized (notebook 03's model or the GGUF); adapters are small fp32 files.
"""
from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


def load_base(cfg):
    """(model, tokenizer) of the base the adapters sit on: notebook 03's mixed-precision model if it
    exists, else the preset's model; dequantized to fp32 when cfg.fake_quant."""
    from .models import base_model_spec, load_model

    return load_model(base_model_spec(cfg), keep_quantized=not cfg.fake_quant,
                      dtype=cfg.compute_dtype)


def base_fingerprint(cfg) -> str:
    """Which base the adapters are trained on: a hash of its files' contents (so a copied run
    keeps its fingerprint) and of how it is computed (fake_quant). A checkpoint, cache or adapter
    made on another base (say, before notebook 03 wrote its model) is then recognised."""
    import hashlib

    from .models import base_model_spec, resolve

    spec = base_model_spec(cfg)
    path = Path(resolve(spec))
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else \
        [path] if path.exists() else []
    stamp = [spec if not files else "files", cfg.fake_quant] + [_file_digest(f) for f in files]
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]


_DIGESTS: dict = {}


def _file_digest(path: Path) -> str:
    """sha1 of a file, remembered per (path, size, mtime): a 1 GB base is hashed once."""
    import hashlib

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def check_base(adapter_path: str | Path, cfg) -> bool:
    """Warn (and return False) when the adapter was trained on another base than cfg's."""
    import warnings

    from .models import base_model_spec

    trained_on = read_adapter_config(adapter_path)
    expected = trained_on.get("base_fingerprint")
    if expected is None or expected == base_fingerprint(cfg):
        return True
    warnings.warn(f"{adapter_path} was trained on {trained_on.get('base_model')!r} (fingerprint "
                  f"{expected}), but it is being loaded onto {base_model_spec(cfg)!r} (fingerprint "
                  f"{base_fingerprint(cfg)}): its outputs will differ from training's",
                  stacklevel=2)
    return False


def lora_config(cfg, which: str = "sft") -> dict:
    """mlx-lm's adapter_config.json for the SFT or DPO adapter (mlx-lm wants scale = alpha / rank)."""
    from .models import base_model_spec

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


def save_dpo_adapter(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    """The DPO adapter alone, under mlx-lm's names (lora_a/lora_b): a standard adapter file."""
    weights = {}
    for name, m in stacked_layers(model):
        weights[f"{name}.lora_a"], weights[f"{name}.lora_b"] = m.dpo_a, m.dpo_b
    return _write_adapter(out_dir, weights, config)


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


def merged_adapter_weights(model: nn.Module) -> dict:
    """One LoRA of rank r1 + r2 and scale 1 equal to the two stacked ones:
    A = [A1 A2] (side by side), B = [s1·B1 ; s2·B2] (stacked), so (x·A)·B = s1·(x·A1)·B1 + s2·(x·A2)·B2."""
    weights = {}
    for name, m in stacked_layers(model):
        weights[f"{name}.lora_a"] = mx.concatenate([m.lora_a, m.dpo_a], axis=1)
        weights[f"{name}.lora_b"] = mx.concatenate([m.scale * m.lora_b, m.dpo_scale * m.dpo_b],
                                                   axis=0)
    return weights


def save_merged_adapter(model: nn.Module, out_dir: str | Path, sft_config: dict,
                        dpo_config: dict) -> Path:
    _same_layers(sft_config, dpo_config)
    rank = sft_config["lora_parameters"]["rank"] + dpo_config["lora_parameters"]["rank"]
    config = {**sft_config, "humanizer_adapter": "sft+dpo merged",
              "lora_parameters": {**sft_config["lora_parameters"], "rank": rank, "scale": 1.0,
                                  "dropout": 0.0}}
    return _write_adapter(out_dir, merged_adapter_weights(model), config)


def fuse(model: nn.Module) -> nn.Module:
    """Fold the active LoRA terms into fp32 base weights: W' = W + s1·(A1·B1)ᵀ + s2·(A2·B2)ᵀ.
    Decoding then costs exactly what the base costs. (On a quantized base use mlx-lm's fuse,
    which re-quantizes W' and so changes the numbers slightly.)"""
    layers = lora_layers(model)
    if any(isinstance(m.linear, nn.QuantizedLinear) for _, m in layers):
        raise ValueError("fuse() is for a dequantized (fp32) base; use mlx_lm.fuse instead")
    model.update_modules(tree_unflatten([(name, m.fuse()) for name, m in layers]))
    mx.eval(model.parameters())
    return model


@contextmanager
def fused_view(model: nn.Module):
    """Within the block the model's LoRA layers are fused (see fuse): decoding runs at the base's
    speed. Afterwards the adapters are back in place, switches unchanged."""
    layers = lora_layers(model)
    can_fuse = layers and not isinstance(layers[0][1].linear, nn.QuantizedLinear)
    if can_fuse:
        fuse(model)
    try:
        yield model
    finally:
        if can_fuse:
            model.update_modules(tree_unflatten(layers))


def adapter_digest(model: nn.Module) -> str:
    """A hash of the adapters as they are in memory (every LoRA matrix and scale; not which
    terms are switched on): outputs cached for one set of adapters are not reused for another."""
    import hashlib

    import numpy as np

    digest = hashlib.sha1()
    for name, layer in lora_layers(model):
        stacked = isinstance(layer, StackedLoRALinear)
        arrays = (layer.lora_a, layer.lora_b) + ((layer.dpo_a, layer.dpo_b) if stacked else ())
        scales = (layer.scale,) + ((layer.dpo_scale,) if stacked else ())
        digest.update(f"{name}{scales}".encode())
        for array in arrays:
            digest.update(np.array(array.astype(mx.float32)).tobytes())
    return digest.hexdigest()[:16]


def trainable_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
