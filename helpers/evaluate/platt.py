"""Platt scaling: a zero-shot score becomes P(AI) through a logistic fit on held-out
validation pairs.
"""
from __future__ import annotations

import numpy as np

# bump when fitted Platt parameters or trained detectors would change for the same data: their
# cached copies under runs/<preset>/detectors/ (helpers.core.cache) are then ignored
DETECTORS_VERSION = 1


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def fit_platt(scores, labels) -> tuple[float, float]:
    """(a, b) with P(AI) = sigmoid(a * score + b), fitted by regularised logistic regression on
    standardised scores (so a tiny calibration set cannot push probabilities to exactly 0 or 1)."""
    # deferred: scikit-learn is slow to import, and only this path needs it
    from sklearn.linear_model import LogisticRegression
    s = np.asarray(scores, dtype=float)
    mean, std = s.mean(), s.std() or 1.0
    lr = LogisticRegression(C=1.0).fit(((s - mean) / std)[:, None], labels)
    a = float(lr.coef_[0, 0]) / std
    return a, float(lr.intercept_[0]) - a * mean


def calibration_pairs(rows: list[dict], n: int) -> tuple[list[str], list[int]]:
    """Texts and labels (0 human, 1 AI) from the first `n` rows of a held-out split."""
    rows = rows[:n]
    return [r["human"] for r in rows] + [r["ai"] for r in rows], [0] * len(rows) + [1] * len(rows)
