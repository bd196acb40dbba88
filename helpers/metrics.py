"""Statistics over a sample, and the measures that need a model.

What is read off one text alone (words, slop, loops, facts, artefacts) lives in text_measures.py.
Here: meaning similarity to the source (MiniLM cosine) and, over a sample, bootstrap 95% CIs for every mean, AUROC, a threshold at a fixed false-positive rate,
and "gap closed" (how far a system moved P(AI) from the AI draft towards human text).
"""
from __future__ import annotations

import numpy as np

from .text_measures import fact_preservation

# --- uncertainty ---------------------------------------------------------------------------------


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean and percentile-bootstrap CI of `values`; NaNs (e.g. texts without facts) left out."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(x))}


def paired_bootstrap_ci(statistic, *arrays, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """CI of `statistic(*arrays)` when the arrays describe the same items (resampled together)."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    stats = [statistic(*(a[idx] for a in arrays))
             for idx in rng.integers(0, n, (n_boot, n))]
    stats = np.asarray([s for s in stats if s is not None and np.isfinite(s)])
    point = statistic(*arrays)
    if point is None or not np.isfinite(point) or len(stats) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": n}
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi), "n": n}


# --- detector quality ----------------------------------------------------------------------------


def auroc(negative_scores, positive_scores) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney)."""
    neg = np.asarray(negative_scores, dtype=float)[None, :]
    pos = np.asarray(positive_scores, dtype=float)[:, None]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def threshold_at_fpr(human_scores, fpr: float = 0.05) -> float:
    """The score a text must EXCEED to be flagged as AI so that at most `fpr` of human texts are:
    the (k+1)-th highest human score with k = floor(fpr * n)."""
    scores = np.sort(np.asarray(human_scores, dtype=float))[::-1]
    return float(scores[min(int(np.floor(fpr * len(scores))), len(scores) - 1)])


def gap_closed(p_source, p_system, p_human) -> float | None:
    """(P_source - P_system) / (P_source - P_human) on mean P(AI): 0 = no change, 1 = as human."""
    source, system, human = np.nanmean(p_source), np.nanmean(p_system), np.nanmean(p_human)
    if not abs(source - human) > 1e-9:  # no gap to close (or nothing scored)
        return None
    return float((source - system) / (source - human))


# --- meaning -------------------------------------------------------------------------------------


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
