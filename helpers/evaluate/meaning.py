"""Meaning kept: the cosine similarity of a rewrite's sentence embedding to its draft's."""
from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def meaning_similarity(embedder, outputs: list[str], sources: list[str]) -> np.ndarray:
    """MiniLM cosine(output, source) per pair."""
    return cosine_rows(embedder(outputs), embedder(sources))


