"""Hub-only code paths tested against tiny random stand-ins placed in a Hugging Face cache: RADAR,
the Binoculars pair, the EditLens data and the `paper` preset's MiniCPM5-1B. They check loading
offline from the cache, label order, tokenization, scoring and the paper preset's plumbing; what
the real weights would score is not tested here (they cannot be downloaded on this machine)."""
from __future__ import annotations

import numpy as np
import pytest

from hub_cache import add_repo, folder_files
from standins import (byte_tokenizer, llama_folder, parquet_dataset_files,
                      roberta_classifier_folder)

RADAR_ID = "TrustSafeAI/RADAR-Vicuna-7B"
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
              "max_position_embeddings": 512}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in HF_HOME=tmp, offline, without HUMANIZER_ASSETS. The hub
    libraries read HF_HOME into module constants when first imported, so those are patched too
    (in-process: a subprocess per test would import torch, transformers and MLX again)."""
    import datasets
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HUMANIZER_ASSETS", raising=False)
    for name, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(home / "hub")),
                        ("HF_HUB_OFFLINE", True)):
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return home


def llama_repo(hub, tmp_path, repo_id: str, config: dict, tokenizer=None, seed: int = 0):
    folder = llama_folder(tmp_path / repo_id.replace("/", "--"), config,
                          tokenizer or byte_tokenizer(), seed)
    return add_repo(hub, repo_id, folder_files(folder))


# ---------------------------------------------------------------- RADAR


def test_radar_loads_from_the_hub_cache_and_scores_p_ai_at_label_0(hub, tmp_path):
    """RADAR's model card and RAID's code read P(AI) as softmax(logits)[:, 0]; its config.json
    names no labels. The score must be that column, for each text in the order given."""
    import torch
    from helpers.detectors import Radar

    add_repo(hub, RADAR_ID, folder_files(roberta_classifier_folder(tmp_path / "radar")))
    radar = Radar(RADAR_ID, max_tokens=32, batch_size=2)
    assert radar.model.config.num_labels == 2
    texts = ["A long text about rivers, " * 3, "Short.", "A middling text, here.", "Hi"]
    scores = radar.score(texts)
    for text, score in zip(texts, scores):
        ids = radar.tokenizer(text, truncation=True, max_length=32, return_tensors="pt")
        assert ids["input_ids"][0, 0] == 0 and ids["input_ids"][0, -1] == 2  # <s> ... </s>
        with torch.inference_mode():
            logits = radar.model(**ids).logits[0].double()
        p_ai = (logits.exp() / logits.exp().sum())[0].item()
        assert score == pytest.approx(p_ai, abs=1e-5)
        assert abs(score - 0.5) > 1e-4  # a wrong column would give 1 - score
