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

import numpy as np

from helpers.core.models import HUB_REVISIONS
from helpers.evaluate.hub import locate

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
