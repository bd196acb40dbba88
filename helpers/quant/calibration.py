"""The calibration tokens: a fixed, documented mix of texts the sensitivity and GPTQ's
Hessians are measured on.
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from helpers.core.cache import bytes_digest
from helpers.data.prepare import load_prepared

PROSE_FILE = Path(__file__).resolve().parents[2] / "data" / "calibration_prose.txt"


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
    texts = calibration_texts(load_prepared(cfg)["train"])
    return calibration_tokens(texts, tokenizer, cfg.calib_texts, cfg.calib_max_tokens)


def tokens_hash(tokens: mx.array) -> str:
    """A digest of the tokens and their shape (12 hex digits: it is shown and recorded)."""
    array = np.array(tokens, dtype=np.int64)
    return bytes_digest([str(array.shape).encode(), array.tobytes()])[:12]


def gptq_calibration(cfg, tokenizer) -> mx.array:
    """GPTQ's calibration rows: the same documented mix as the scan, more rows (a Hessian of
    d_in x d_in needs well over d_in tokens to be well conditioned)."""
    texts = calibration_texts(load_prepared(cfg)["train"])
    return calibration_tokens(texts, tokenizer, cfg.gptq_calib_texts, cfg.gptq_calib_tokens)
