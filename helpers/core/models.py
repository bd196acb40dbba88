"""Load a language model for MLX from a hub id, a local MLX/HF folder, or a GGUF file.

Hub ids are mapped to local copies when HUMANIZER_ASSETS points at a folder that has them (that is
how CI and offline machines work); otherwise mlx-lm downloads from the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.nn as nn
from mlx.utils import tree_flatten

from helpers.core.gguf import load_gguf
from helpers.core.owned import check_folder, install_folder, staging_folder
from helpers.core.precision import dequantize_exactly, set_compute_dtype

# hub id -> path inside $HUMANIZER_ASSETS (README, "Models and data")
ASSET_PATHS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct":
        "models/SmolLM2-135M-Instruct-Q4_1/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sentence-transformers/all-MiniLM-L6-v2": "models/all-MiniLM-L6-v2",
}


# hub id -> the revision to read: RADAR's main branch holds its weights only as pytorch_model.bin
# (pickle, which is never loaded here); its pull request 2 holds the same weights as safetensors
HUB_REVISIONS = {"TrustSafeAI/RADAR-Vicuna-7B": "refs/pr/2"}


class ModelNotAvailable(RuntimeError):
    pass


def assets_dir() -> Path | None:
    value = os.environ.get("HUMANIZER_ASSETS")
    return Path(value).expanduser().resolve() if value else None


def resolve(spec: str) -> str:
    """A local path for `spec` if there is one (the path itself or its HUMANIZER_ASSETS copy),
    else the hub id unchanged."""
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser())
    root = assets_dir()
    if root is not None:
        candidates = [root / ASSET_PATHS[spec]] if spec in ASSET_PATHS else []
        candidates.append(root / "models" / spec.split("/")[-1])
        for candidate in candidates:
            if candidate.exists():
                return str(candidate)
    return spec


def _hub_error(spec: str, err: Exception) -> ModelNotAvailable:
    root = assets_dir()
    if root is None:
        where = "HUMANIZER_ASSETS is not set"
    elif not root.is_dir():
        where = f"HUMANIZER_ASSETS={root} is not a folder"
    else:
        where = f"HUMANIZER_ASSETS={root} has no {ASSET_PATHS.get(spec, 'models/' + spec.split('/')[-1])}"
    fetch = f"make assets DEST={root}" if root else f"hf download {spec}"
    return ModelNotAvailable(
        f"Cannot load {spec!r}: it is not a local path, {where}, and the Hugging Face hub "
        f"could not be reached ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"On a connected machine run "
        f"`{fetch}` once (an offline pack: README, \"Offline classroom\").")


def load_model(spec: str, keep_quantized: bool = True, dtype: str = "float32",
               adapter_path: str | None = None, return_config: bool = False):
    """(model, tokenizer[, config]) for a hub id, a local MLX/HF folder or a .gguf file.

    keep_quantized=False dequantizes every quantized layer (the high-precision reference for the
    sensitivity analysis). `dtype` is the compute dtype of the float parameters: float32 on CPU.
    The model runs on whatever kernels the process chose: mlx-lm's own unless it called
    helpers.core.fast_cpu.install() (the notebooks and command-line tools do, at their start).
    """
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    import mlx_lm

    path = resolve(spec)
    if path.endswith(".gguf"):
        model, tokenizer, config = load_gguf(path, keep_quantized=keep_quantized)
        if adapter_path:
            # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
            from mlx_lm.utils import load_adapters
            model = load_adapters(model, adapter_path)
    else:
        try:
            model, tokenizer, config = mlx_lm.load(path, adapter_path=adapter_path,
                                                   return_config=True)
        except Exception as err:  # noqa: BLE001 - hub errors come in many types
            if Path(path).exists():
                raise
            raise _hub_error(spec, err) from err
        if not keep_quantized:
            model = dequantize_exactly(model)
            config = {k: v for k, v in config.items()
                      if k not in ("quantization", "quantization_config")}
    set_compute_dtype(model, dtype)
    model.eval()
    return (model, tokenizer, config) if return_config else (model, tokenizer)


MLX_TOOL = "mlx model export"


def save_mlx_model(model: nn.Module, tokenizer, config: dict, out_dir: str | Path,
                   overwrite: bool = False) -> Path:
    """Save in mlx-lm's own format (model.safetensors + config.json + tokenizer) so that
    `mlx_lm.load(out_dir)` and the mlx_lm command-line tools read it unchanged.
    Written to a temporary folder first, then moved in: an interrupted save leaves nothing
    half-done. `out_dir` may be new, empty, or an earlier save (with `overwrite`, whose listed
    files are replaced); anything else is refused (helpers/core/owned.py)."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.utils import save_config, save_model


    out_dir = Path(out_dir)
    check_folder(MLX_TOOL, out_dir, overwrite)
    with staging_folder(out_dir) as tmp:
        save_model(tmp, model)
        save_config(dict(config), config_path=tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        return install_folder(MLX_TOOL, tmp, out_dir, overwrite)


def parameter_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def describe(model: nn.Module, config: dict) -> dict:
    """A short summary for notebooks: size, layers, quantization."""
    # deferred: mlx_lm (it imports transformers) is slow to import, and only this path needs it
    from mlx_lm.utils import compute_bits_per_weight, get_total_parameters

    q = config.get("quantization") or {}
    return {
        "layers": config.get("num_hidden_layers"),
        "hidden size": config.get("hidden_size"),
        "vocabulary": config.get("vocab_size"),
        "parameters (M)": round(get_total_parameters(model) / 1e6, 1),
        "quantized": bool(q),
        "bits (most layers)": q.get("bits"),
        "group size": q.get("group_size"),
        "bits per weight (stored, incl. scales)": round(compute_bits_per_weight(model), 2),
        "MB in memory": round(parameter_bytes(model) / 2**20, 1),
    }


def base_model_spec(cfg) -> str:
    """The model later notebooks build on: notebook 03's mixed-precision model when it exists and
    was made from cfg.model (its config.json's "quantized_from"), else the preset's model."""
    config_file = cfg.input_path("quantized_model") / "config.json"
    if not config_file.exists():
        return cfg.model
    source = json.loads(config_file.read_text(encoding="utf-8")).get("quantized_from", cfg.model)
    return str(config_file.parent) if source == cfg.model else cfg.model
