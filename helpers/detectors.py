"""AI-text detectors behind one interface: `detector.score(texts)` -> P(AI) per text (numpy).

- RADAR: a RoBERTa classifier trained adversarially against a paraphraser (P(AI) = softmax[:, 0]).
- Fast-DetectGPT (Bao et al. 2024): how much more likely the text is than what the scoring LM
  itself would write, in units of that expectation's spread (analytic sampling discrepancy).
- Binoculars (Hans et al. 2024): an LM's log-perplexity on the text divided by the cross-entropy
  between two LMs that share a tokenizer.
- MiniLM + logistic regression, trained here on the training split's human vs AI texts.

Zero-shot detectors give a raw score (higher = more AI-like); Platt scaling fitted on held-out
validation pairs turns it into P(AI). Fitted parameters are cached under runs/<preset>/detectors/
as JSON and safetensors (never pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import mlx.core as mx
import numpy as np

from .io import atomic_write_bytes, atomic_write_json, read_json
from .models import ModelNotAvailable, load_model, resolve

# --- finding models ------------------------------------------------------------------------------


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def locate(spec: str) -> str:
    """A local path for `spec` (itself, its HUMANIZER_ASSETS copy, or the Hugging Face cache), or
    the hub id when the hub answers. Fails fast and plainly otherwise (no minute of retries)."""
    path = resolve(spec)
    if Path(path).exists():
        return path
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(spec, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise ModelNotAvailable(
            f"{spec!r} is not available: it is not a local path, not in HUMANIZER_ASSETS "
            f"(models/{spec.split('/')[-1]}) nor in the Hugging Face cache, and {why}. "
            f"On a connected machine run `huggingface-cli download {spec}` once, or copy it to "
            f"$HUMANIZER_ASSETS/models/{spec.split('/')[-1]}.")
    return spec


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def fit_platt(scores, labels) -> tuple[float, float]:
    """(a, b) with P(AI) = sigmoid(a * score + b), fitted by regularised logistic regression on
    standardised scores (so a tiny calibration set cannot push probabilities to exactly 0 or 1)."""
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


# --- RADAR ---------------------------------------------------------------------------------------


class Radar:
    name = "RADAR"

    def __init__(self, spec: str = "TrustSafeAI/RADAR-Vicuna-7B", max_tokens: int = 512,
                 batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        source = locate(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForSequenceClassification.from_pretrained(source).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def score(self, texts: list[str]) -> np.ndarray:
        import torch
        out = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                idx = order[i:i + self.batch_size]
                enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
                # label 0 is "AI-generated" in RADAR's release (and in the RAID benchmark code)
                out[idx] = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, 0].numpy()
        return out


# --- zero-shot detectors from causal-LM probabilities --------------------------------------------


def _log_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p, p) over the last axis. In numpy: MLX's exp runs ~10x slower on this CPU."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1, keepdims=True)
    return z - np.log(total), e / total


def sampling_discrepancy(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fast-DetectGPT's analytic criterion, per sequence (sampling model = scoring model):
    (sum_t log p(x_t) - sum_t E[log p]) / sqrt(sum_t Var[log p]), expectations under p itself.
    logits (B, T, V) predict labels (B, T); mask (B, T) is 1 on real tokens."""
    out = np.zeros(len(logits))
    for i in range(len(logits)):  # one row at a time keeps the (T, V) temporaries small
        logp, p = _log_softmax(logits[i].astype(np.float32))
        observed = np.take_along_axis(logp, labels[i][:, None], axis=-1)[:, 0]
        expected = (p * logp).sum(-1)
        variance = (p * logp * logp).sum(-1) - expected * expected
        out[i] = ((observed - expected) * mask[i]).sum() / np.sqrt((variance * mask[i]).sum())
    return out


def binoculars_score(observer_logits: np.ndarray, performer_logits: np.ndarray,
                     labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log-perplexity of the performer on the text / cross-perplexity (observer's probabilities
    against the performer's log-probabilities), as in the Binoculars reference code. Low = AI."""
    out = np.zeros(len(labels))
    for i in range(len(labels)):
        logq, _ = _log_softmax(performer_logits[i].astype(np.float32))
        _, p = _log_softmax(observer_logits[i].astype(np.float32))
        n = mask[i].sum()
        log_ppl = -(np.take_along_axis(logq, labels[i][:, None], axis=-1)[:, 0] * mask[i]).sum() / n
        x_ppl = -((p * logq).sum(-1) * mask[i]).sum() / n
        out[i] = log_ppl / x_ppl
    return out


def batches(tokenizer, texts: list[str], max_tokens: int, batch_size: int):
    """(indices, inputs, labels, mask) batches (inputs in MLX, the rest numpy), right-padded: with
    a causal model, padding after the text changes nothing before it, so batched scores equal
    one-by-one scores. Texts under 2 tokens have nothing to score and are left out."""
    ids = [tokenizer.encode(t)[:max_tokens] for t in texts]
    order = [j for j in np.argsort([len(x) for x in ids], kind="stable") if len(ids[j]) >= 2]
    for i in range(0, len(order), batch_size):
        idx = np.array(order[i:i + batch_size])
        width = max(len(ids[j]) for j in idx)
        grid = np.zeros((len(idx), width), dtype=np.int32)
        mask = np.zeros((len(idx), width - 1), dtype=np.float32)
        for row, j in enumerate(idx):
            grid[row, :len(ids[j])] = ids[j]
            mask[row, :len(ids[j]) - 1] = 1.0
        yield idx, mx.array(grid[:, :-1]), grid[:, 1:], mask


def _logits(model, inputs: mx.array) -> np.ndarray:
    logits = model(inputs).astype(mx.float32)
    mx.eval(logits)
    return np.asarray(logits)


class ZeroShot:
    """A raw score (higher = more AI-like) made into P(AI) by Platt scaling."""
    name = "zero-shot"
    platt = (1.0, 0.0)
    max_tokens, batch_size = 512, 4

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        out = np.full(len(texts), np.nan)  # NaN: too short to score
        for idx, inputs, labels, mask in batches(self.tokenizer, texts, self.max_tokens,
                                                 self.batch_size):
            out[idx] = self._batch_scores(inputs, labels, mask)
        return out

    def score(self, texts: list[str]) -> np.ndarray:
        return _sigmoid(self.platt[0] * self.raw_scores(texts) + self.platt[1])

    def calibrate(self, texts: list[str], labels: list[int], cache: Path | None = None,
                  key: str = "") -> "ZeroShot":
        """Fit (or reload from `cache`, if it was fitted on the same texts) the Platt mapping."""
        fingerprint = _fingerprint(self.name, key, texts, labels)
        if cache and cache.exists() and read_json(cache).get("fingerprint") == fingerprint:
            self.platt = tuple(read_json(cache)["platt"])
            return self
        raw = self.raw_scores(texts)
        keep = ~np.isnan(raw)
        self.platt = fit_platt(raw[keep], np.asarray(labels)[keep])
        if cache:
            atomic_write_json(cache, {"detector": self.name, "key": key, "fingerprint": fingerprint,
                                      "platt": list(self.platt), "n_texts": len(texts)})
        return self


class FastDetectGPT(ZeroShot):
    name = "Fast-DetectGPT"

    def __init__(self, model, tokenizer, max_tokens: int = 512, batch_size: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def _batch_scores(self, inputs, labels, mask):
        return sampling_discrepancy(_logits(self.model, inputs), labels, mask)


class Binoculars(ZeroShot):
    name = "Binoculars"

    def __init__(self, observer, performer, tokenizer, max_tokens: int = 512, batch_size: int = 4):
        self.observer, self.performer, self.tokenizer = observer, performer, tokenizer
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def _batch_scores(self, inputs, labels, mask):
        score = binoculars_score(_logits(self.observer, inputs), _logits(self.performer, inputs),
                                 labels, mask)
        return -score  # low Binoculars score means AI: flip so that higher = more AI-like


def load_binoculars(observer_spec: str, performer_spec: str, **kwargs) -> Binoculars:
    observer, tokenizer = load_model(locate(observer_spec), keep_quantized=False)
    performer, performer_tokenizer = load_model(locate(performer_spec), keep_quantized=False)
    if tokenizer.get_vocab() != performer_tokenizer.get_vocab():
        raise ModelNotAvailable(f"Binoculars needs two models with one tokenizer; "
                                f"{observer_spec!r} and {performer_spec!r} tokenize differently")
    return Binoculars(observer, performer, tokenizer, **kwargs)


# --- sentence embeddings and the trained detector ------------------------------------------------


class Embedder:
    """Unit-length MiniLM sentence embeddings; each distinct text is encoded once."""

    def __init__(self, spec: str = "sentence-transformers/all-MiniLM-L6-v2", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer
        self.spec, self.batch_size = spec, batch_size
        self.model = SentenceTransformer(locate(spec), device="cpu")
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            vectors = self.model.encode(missing, batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)
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
    def train(cls, embedder, texts, labels, calib_texts, calib_labels, seed: int = 0):
        """Texts come as [all human, then all AI] of the same rows: cross-validation folds keep
        both texts of a row together, so choosing C never sees a paragraph's twin."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold, cross_val_score
        x, labels = embedder(texts), np.asarray(labels)
        groups = np.arange(len(texts)) % (len(texts) // 2)

        def cv_log_loss(c):
            lr = LogisticRegression(C=c, max_iter=2000)
            return cross_val_score(lr, x, labels, groups=groups, cv=GroupKFold(5),
                                   scoring="neg_log_loss").mean()

        best_c = max([0.1, 1.0, 10.0, 100.0], key=cv_log_loss)
        lr = LogisticRegression(C=best_c, max_iter=2000).fit(x, labels)
        detector = cls(embedder, lr.coef_[0].astype(np.float32), lr.intercept_[0], (1.0, 0.0))
        detector.platt = fit_platt(detector.decision(calib_texts), calib_labels)
        detector.meta = {"C": best_c, "n_train": len(texts), "n_calib": len(calib_texts)}
        return detector

    def save(self, folder: Path, fingerprint: str) -> None:
        from safetensors.numpy import save
        atomic_write_bytes(folder / "minilm_lr.safetensors",
                           save({"weight": self.weight, "bias": np.array([self.bias], np.float32)}))
        atomic_write_json(folder / "minilm_lr.json", {**self.meta, "embedder": self.embedder.spec,
                                                      "platt": list(self.platt),
                                                      "fingerprint": fingerprint})

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, fingerprint: str):
        """The saved detector, or None when there is none or it was trained on other data."""
        from safetensors.numpy import load_file
        meta_path = folder / "minilm_lr.json"
        if not meta_path.exists() or read_json(meta_path).get("fingerprint") != fingerprint:
            return None
        meta = read_json(meta_path)
        tensors = load_file(str(folder / "minilm_lr.safetensors"))
        return cls(embedder, tensors["weight"], tensors["bias"][0], meta["platt"], meta)


def trained_detector(cfg, embedder: Embedder, data: dict) -> EmbeddingDetector:
    """Train on `cfg.detector_train_pairs` training pairs (human vs AI; data['detector']: chosen
    before the SFT data filter), calibrate on validation pairs; reuse
    runs/<preset>/detectors/minilm_lr.* when trained on the same data."""
    train = data["detector"][:cfg.detector_train_pairs]
    texts, labels = calibration_pairs(train, len(train))
    calib_texts, calib_labels = calibration_pairs(data["val"], len(data["val"]))
    fingerprint = _fingerprint(embedder.spec, cfg.seed, texts, calib_texts)
    folder = cfg.path("detectors")
    detector = EmbeddingDetector.load(folder, embedder, fingerprint)
    if detector is None:
        detector = EmbeddingDetector.train(embedder, texts, labels, calib_texts, calib_labels,
                                           seed=cfg.seed)
        detector.save(folder, fingerprint)
    return detector


# --- everything this machine can run -------------------------------------------------------------


def load_detectors(cfg, embedder: Embedder, data: dict) -> tuple[dict, dict]:
    """({name: detector} for every detector available here, {name: why not} for the others).
    Zero-shot detectors are calibrated on `cfg.detector_calib_pairs` validation pairs."""
    detectors, unavailable = {}, {}
    calib_texts, calib_labels = calibration_pairs(data["val"], cfg.detector_calib_pairs)
    folder = cfg.path("detectors")
    try:
        detectors["RADAR"] = Radar(cfg.radar_model, cfg.detector_max_tokens)
    except ModelNotAvailable as err:
        unavailable["RADAR"] = str(err)

    scorer_spec = cfg.scorer_model or cfg.model
    try:
        model, tokenizer = load_model(locate(scorer_spec), keep_quantized=False)
        detectors["Fast-DetectGPT"] = FastDetectGPT(model, tokenizer, cfg.detector_max_tokens) \
            .calibrate(calib_texts, calib_labels, folder / "fast_detectgpt.json", scorer_spec)
    except ModelNotAvailable as err:
        unavailable["Fast-DetectGPT"] = str(err)

    if len(cfg.binoculars_models) != 2:
        unavailable["Binoculars"] = (
            "needs two language models that share a tokenizer (an observer and a performer, e.g. "
            "a base model and its instruct version); set binoculars_models=(observer, performer)")
    else:
        try:
            detectors["Binoculars"] = load_binoculars(*cfg.binoculars_models,
                                                      max_tokens=cfg.detector_max_tokens) \
                .calibrate(calib_texts, calib_labels, folder / "binoculars.json",
                           "|".join(cfg.binoculars_models))
        except ModelNotAvailable as err:
            unavailable["Binoculars"] = str(err)

    detectors["MiniLM+LR"] = trained_detector(cfg, embedder, data)
    return detectors, unavailable
