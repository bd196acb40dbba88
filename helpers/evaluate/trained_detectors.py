"""Detectors trained here on the training split: n-gram TF-IDF + logistic
regression (also the training judge), and style features + LR.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sparse

from helpers.core.cache import content_key, load_arrays, load_json, save_arrays, save_json
from helpers.data.prepare import clean, one_per_paragraph
from helpers.data.sources import load_split, paragraph_key
from helpers.evaluate.platt import DETECTORS_VERSION, _sigmoid, calibration_pairs, fit_platt


def training_texts(rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, groups) from paired rows: all human texts (0), then all AI texts (1);
    groups are the human paragraph's key, so a paragraph's texts stay in one CV fold."""
    texts, labels = calibration_pairs(rows, len(rows))
    keys = [paragraph_key(r["human"]) for r in rows]
    return texts, np.asarray(labels), np.asarray(keys + keys)


def choose_c(x, labels, groups, grid=(0.1, 1.0, 10.0, 100.0), folds: int = 5) -> float:
    """The logistic regression's inverse regularisation C with the best cross-validated log
    loss, folds split by paragraph (so no fold sees a paragraph's twin text)."""
    # deferred: scikit-learn is slow to import, and only this path needs it
    from sklearn.linear_model import LogisticRegression

    # deferred: scikit-learn is slow to import, and only this path needs it
    from sklearn.model_selection import GroupKFold, cross_val_score

    def cv_log_loss(c):
        lr = LogisticRegression(C=c, max_iter=3000)
        return cross_val_score(lr, x, labels, groups=groups, cv=GroupKFold(folds),
                               scoring="neg_log_loss").mean()

    return max(grid, key=cv_log_loss)


def paragraph_keys(rows: list[dict]) -> set[str]:
    """Keys of every text in `rows` (human and AI side, or prompt/chosen/rejected)."""
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
        # deferred: scikit-learn is slow to import, and only this path needs it
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

    def save(self, folder: Path, key: str, slug: str | None = None) -> None:
        """<slug>.safetensors (arrays) and <slug>.json (the rest), both under cache `key`."""
        slug = slug or self.slug
        arrays = {k: v for k, v in self.state.items() if isinstance(v, np.ndarray)}
        lists = {k: v for k, v in self.state.items() if not isinstance(v, np.ndarray)}
        save_arrays(folder / f"{slug}.safetensors", key,
                    {**arrays, "weight": self.weight, "bias": np.array([self.bias], np.float32)})
        save_json(folder / f"{slug}.json", key,
                  {**self.meta, "state": lists, "platt": list(self.platt)}, keep=False)

    @classmethod
    def load(cls, folder: Path, key: str, slug: str | None = None):
        """The saved detector, or None when there is none or it was saved under another key."""
        slug = slug or cls.slug
        meta = load_json(folder / f"{slug}.json", key)
        arrays = load_arrays(folder / f"{slug}.safetensors", key) if meta is not None else None
        if arrays is None:
            return None
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
        # deferred: scikit-learn is slow to import, and only this path needs it
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
    key = content_key("trained-detector", DETECTORS_VERSION, slug=slug, cls=cls.__name__,
                      c_grid=list(cls.c_grid), rows=[(r["human"], r["ai"]) for r in rows],
                      calib_rows=[(r["human"], r["ai"]) for r in calib_rows])
    for folder in dict.fromkeys([cfg.path("detectors"), cfg.input_path("detectors")]):
        detector = cls.load(folder, key, slug)
        if detector is not None:
            return detector
    detector = cls.train(rows, calib_rows)
    detector.save(cfg.path("detectors"), key, slug)
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
