"""Meaning kept: cosine similarity of sentence embeddings, and the candidate that
keeps the most facts (ties to meaning).
"""
from __future__ import annotations

import numpy as np

from helpers.evaluate.text_measures import fact_preservation


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def meaning_similarity(embedder, outputs: list[str], sources: list[str]) -> np.ndarray:
    """MiniLM cosine(output, source) per pair."""
    return cosine_rows(embedder(outputs), embedder(sources))


def best_by_facts(source: str, candidates: list[str], meaning_fn=None) -> int:
    """Index of the candidate rewrite of `source` to keep (verify and resample): the one keeping
    the most facts; ties go to the closest in meaning (`meaning_fn(source, candidates)` gives one
    similarity per candidate), then to the earliest. An empty text loses to any other."""
    if not candidates:
        raise ValueError("best_by_facts: no candidates to choose from")
    kept = [fact_preservation(source, c) for c in candidates]
    kept = [0.0 if k != k else k for k in kept]  # NaN: the source has no facts, all tie
    meaning = list(meaning_fn(source, candidates)) if meaning_fn else [0.0] * len(candidates)
    if len(meaning) != len(candidates):
        raise ValueError(f"best_by_facts: meaning_fn gave {len(meaning)} scores for "
                         f"{len(candidates)} candidates")
    keys = [(bool(c.strip()), k, float(m)) for c, k, m in zip(candidates, kept, meaning)]
    return max(range(len(candidates)), key=keys.__getitem__)  # max keeps the first of ties
