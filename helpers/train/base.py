"""The frozen base every adapter is trained on: loaded from the run, and fingerprinted so that an
adapter trained on another base is caught before its outputs silently differ."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers.core.models import base_model_spec, load_model, resolve


def load_base(cfg):
    """(model, tokenizer) of the base the adapters sit on: notebook 03's mixed-precision model if it
    exists, else the preset's model; dequantized to fp32 when cfg.fake_quant."""
    return load_model(base_model_spec(cfg), keep_quantized=not cfg.fake_quant,
                      dtype=cfg.compute_dtype)


def base_fingerprint(cfg) -> str:
    """Which base the adapters are trained on: a hash of its files' contents (so a copied run
    keeps its fingerprint) and of how it is computed (fake_quant). A checkpoint, cache or adapter
    made on another base (say, before notebook 03 wrote its model) is then recognised."""
    spec = base_model_spec(cfg)
    path = Path(resolve(spec))
    # hidden files are the tools' bookkeeping (a manifest with mtimes), not the model
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")) \
        if path.is_dir() else \
        [path] if path.exists() else []
    stamp = [spec if not files else "files", cfg.fake_quant] + [_file_digest(f) for f in files]
    return hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]


_DIGESTS: dict = {}


def _file_digest(path: Path) -> str:
    """sha1 of a file, remembered per (path, size, mtime): a 1 GB base is hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


