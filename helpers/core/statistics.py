"""Statistics over a sample: bootstrap 95% CIs (plain and paired), AUROC, the
threshold at a false-positive rate, and the share of a gap closed.
"""
from __future__ import annotations

import numpy as np


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


def format_ci(stat: dict | None, digits: int = 2, percent: bool = False) -> str:
    """'0.61 [0.55, 0.67]' (or '35% [10, 60]')."""
    if not stat or stat.get("mean") is None:
        return "—"
    if percent:
        return "{:.0f}% [{:.0f}, {:.0f}]".format(*(100 * stat[k] for k in ("mean", "lo", "hi")))
    return "{0:.{3}f} [{1:.{3}f}, {2:.{3}f}]".format(stat["mean"], stat["lo"], stat["hi"], digits)
