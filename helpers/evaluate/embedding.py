"""MiniLM sentence embeddings, and the detector trained on them (+ logistic
regression).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.core.cache import content_key, load_arrays, load_json, save_arrays, save_json
from helpers.core.env import torch_threads_beside_openblas
from helpers.evaluate.hub import locate
from helpers.evaluate.platt import DETECTORS_VERSION, _sigmoid, calibration_pairs, fit_platt
from helpers.evaluate.trained_detectors import choose_c, detector_rows, training_texts


class Embedder:
    """Unit-length MiniLM sentence embeddings; each distinct text is encoded once."""

    def __init__(self, spec: str = "sentence-transformers/all-MiniLM-L6-v2", batch_size: int = 32):
        # deferred: sentence-transformers (it imports torch) is slow to import, and only this path needs it
        from sentence_transformers import SentenceTransformer
        self.spec, self.batch_size = spec, batch_size
        self.model = SentenceTransformer(locate(spec), device="cpu")
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        """One forward pass over `texts`, uncached, on torch's current threads."""
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            with torch_threads_beside_openblas():
                vectors = self.encode(missing)
            self.cache.update(zip(missing, vectors.astype(np.float32)))
        dim = self.model.get_embedding_dimension()
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, dim))


class EmbeddingDetector:
    """Logistic regression on MiniLM embeddings, then Platt-calibrated on held-out pairs."""
    name = "MiniLM+LR"

    def __init__(self, embedder: Embedder, weight: np.ndarray, bias: float, platt, meta=None):
        self.embedder, self.weight, self.bias = embedder, weight, float(bias)
        self.platt, self.meta = tuple(platt), meta or {}

    def decision(self, texts: list[str]) -> np.ndarray:
        return self.embedder(texts) @ self.weight + self.bias

    def score(self, texts: list[str]) -> np.ndarray:
        return _sigmoid(self.platt[0] * self.decision(texts) + self.platt[1])

    @classmethod
    def train(cls, embedder, texts, labels, calib_texts, calib_labels, seed: int = 0,
              groups=None):
        """`groups`: one paragraph key per text (default: texts come as [all human, then all AI]
        of the same rows, so a row's two texts share a group)."""
        # deferred: scikit-learn is slow to import, and only this path needs it
        from sklearn.linear_model import LogisticRegression
        x, labels = embedder(texts), np.asarray(labels)
        groups = np.arange(len(texts)) % (len(texts) // 2) if groups is None else groups
        best_c = choose_c(x, labels, groups)
        lr = LogisticRegression(C=best_c, max_iter=2000).fit(x, labels)
        detector = cls(embedder, lr.coef_[0].astype(np.float32), lr.intercept_[0], (1.0, 0.0))
        detector.platt = fit_platt(detector.decision(calib_texts), calib_labels)
        detector.meta = {"C": best_c, "n_train": len(texts), "n_calib": len(calib_texts)}
        return detector

    def save(self, folder: Path, key: str) -> None:
        """minilm_lr.safetensors (weights) and minilm_lr.json (the rest), both under cache `key`."""
        save_arrays(folder / "minilm_lr.safetensors", key,
                    {"weight": self.weight, "bias": np.array([self.bias], np.float32)})
        save_json(folder / "minilm_lr.json", key, {**self.meta, "embedder": self.embedder.spec,
                                                   "platt": list(self.platt)}, keep=False)

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, key: str):
        """The saved detector, or None when there is none or it was saved under another key."""
        meta = load_json(folder / "minilm_lr.json", key)
        tensors = load_arrays(folder / "minilm_lr.safetensors", key) if meta is not None else None
        if tensors is None:
            return None
        return cls(embedder, tensors["weight"], tensors["bias"][0], meta["platt"], meta)


def trained_detector(cfg, embedder: Embedder, data: dict) -> EmbeddingDetector:
    """Train on `cfg.detector_train_pairs` training pairs (human vs AI; data['detector']: chosen
    before the SFT data filter), calibrate on validation pairs; reuse
    runs/<preset>/detectors/minilm_lr.* when trained on the same data."""
    train = detector_rows(cfg, data)
    texts, labels, groups = training_texts(train)
    calib_texts, calib_labels = calibration_pairs(data["val"], len(data["val"]))
    key = content_key("embedding-detector", DETECTORS_VERSION, embedder=embedder.spec,
                      seed=cfg.seed, texts=list(texts), calib_texts=list(calib_texts))
    folder = cfg.path("detectors")
    detector = EmbeddingDetector.load(folder, embedder, key)
    if detector is None:
        detector = EmbeddingDetector.train(embedder, texts, labels.tolist(), calib_texts,
                                           calib_labels, seed=cfg.seed, groups=groups)
        detector.save(folder, key)
    return detector
