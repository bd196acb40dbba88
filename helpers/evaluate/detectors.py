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

from helpers.core.models import ModelNotAvailable, load_model
from helpers.evaluate.embedding import Embedder, trained_detector
from helpers.evaluate.hub import locate
from helpers.evaluate.platt import calibration_pairs
from helpers.evaluate.radar import Radar
from helpers.evaluate.trained_detectors import (
    NgramDetector,
    StyleDetector,
    check_disjoint,
    detector_rows,
    fitted,
)
from helpers.evaluate.zero_shot import (
    OTHER_FAMILY,
    FastDetectGPT,
    load_binoculars,
    other_family_detector,
)


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
