"""RADAR (Hu et al. 2023): a RoBERTa classifier trained adversarially against a paraphraser;
P(AI) = softmax(logits)[:, 0]. Its weights are read as safetensors from the hub revision that
holds them (the main branch has only a pickle, which this project never loads).
"""

from __future__ import annotations

import numpy as np

from helpers.core.env import torch_threads_beside_openblas
from helpers.core.models import HUB_REVISIONS
from helpers.evaluate.hub import locate

RADAR_ID = "TrustSafeAI/RADAR-Vicuna-7B"

RADAR_REVISION = HUB_REVISIONS[RADAR_ID]  # its weights as safetensors


class Radar:
    name = "RADAR"

    def __init__(self, spec: str = RADAR_ID, max_tokens: int = 512, batch_size: int = 8):
        # deferred: transformers is slow to import, and only this path needs it
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        revision = HUB_REVISIONS.get(spec)
        source = locate(spec, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, revision=revision, use_safetensors=True).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def score(self, texts: list[str]) -> np.ndarray:
        # deferred: torch is slow to import, and only this path needs it
        import torch
        out = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        with torch.inference_mode(), torch_threads_beside_openblas():
            for i in range(0, len(texts), self.batch_size):
                idx = order[i:i + self.batch_size]
                enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
                # label 0 is "AI-generated" in RADAR's release (and in the RAID benchmark code)
                out[idx] = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, 0].numpy()
        return out
