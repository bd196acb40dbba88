"""Hub-only code paths tested against tiny random stand-ins placed in a Hugging Face cache: RADAR,
the Binoculars pair, the EditLens data and the `paper` preset's MiniCPM5-1B. They check loading
offline from the cache, label order, tokenization, scoring and the paper preset's plumbing; what
the real weights would score is not tested here (they cannot be downloaded on this machine)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.evaluate.radar import RADAR_ID, RADAR_REVISION

from hub_cache import add_repo, folder_files
from standins import byte_tokenizer, llama_folder, parquet_dataset_files, roberta_classifier_folder

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

    from helpers.evaluate.radar import Radar

    add_repo(hub, RADAR_ID, folder_files(roberta_classifier_folder(tmp_path / "radar")),
             ref=RADAR_REVISION)
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


# ---------------------------------------------------------------- Binoculars


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_binoculars_pair_loads_from_the_hub_cache_and_scores_by_the_formula(hub, tmp_path):
    """The workshop preset's pair, as random Llamas sharing one tokenizer. Binoculars score of
    tokens x_1..x_n, observer p, performer q (Hans et al. 2024, reference code):
    log PPL_q = -(1/n) Σ_t log q(x_t | x_<t);  X-PPL = -(1/n) Σ_t Σ_v p(v | x_<t) log q(v | x_<t);
    B = log PPL / X-PPL, and the detector's raw score is -B (higher = more AI-like)."""
    import mlx.core as mx

    from helpers.core.config import get_config
    from helpers.evaluate.zero_shot import load_binoculars

    observer_id, performer_id = get_config("workshop").binoculars_models
    llama_repo(hub, tmp_path, observer_id, TINY_LLAMA, seed=1)
    llama_repo(hub, tmp_path, performer_id, TINY_LLAMA, seed=2)
    detector = load_binoculars(observer_id, performer_id)
    text = "The river rose 3 metres overnight."
    ids = detector.tokenizer.encode(text)
    assert detector.tokenizer.decode(ids, skip_special_tokens=True) == text
    inputs, targets = mx.array([ids[:-1]]), np.array(ids[1:])
    logp = log_softmax(np.array(detector.observer(inputs)[0], dtype=np.float64))
    logq = log_softmax(np.array(detector.performer(inputs)[0], dtype=np.float64))
    log_ppl = -logq[np.arange(len(targets)), targets].mean()
    x_ppl = -(np.exp(logp) * logq).sum(-1).mean()
    assert detector.raw_scores([text])[0] == pytest.approx(-log_ppl / x_ppl, rel=1e-4)
    assert not np.allclose(logp, logq)  # two different models, not one scored twice


def test_binoculars_refuses_two_models_with_different_tokenizers(hub, tmp_path):
    from helpers.core.config import get_config
    from helpers.core.models import ModelNotAvailable
    from helpers.evaluate.zero_shot import load_binoculars

    observer_id, performer_id = get_config("workshop").binoculars_models
    llama_repo(hub, tmp_path, observer_id, TINY_LLAMA)
    other = byte_tokenizer(extra_tokens=("river",))
    llama_repo(hub, tmp_path, performer_id, TINY_LLAMA, other)
    with pytest.raises(ModelNotAvailable, match="one tokenizer.*tokenize differently"):
        load_binoculars(observer_id, performer_id)


def test_load_detectors_finds_every_hub_detector_in_the_cache(hub, tmp_path, runs):
    """The workshop preset's evaluation set-up with RADAR, its model (Fast-DetectGPT's scorer)
    and the Binoculars pair only in the hub cache: none of them is reported unavailable. The
    other family's scorer (Gemma, not a hub stand-in here) is switched off: notebook 07's smoke run
    loads it."""
    from test_detectors import FakeEmbedder, style_rows

    from helpers.core.config import get_config
    from helpers.evaluate.detectors import load_detectors
    from helpers.evaluate.zero_shot import OTHER_FAMILY

    cfg = get_config("workshop", other_scorer_model="")
    add_repo(hub, RADAR_ID, folder_files(roberta_classifier_folder(tmp_path / "radar")),
             ref=RADAR_REVISION)
    for seed, repo_id in enumerate(dict.fromkeys([cfg.model, *cfg.binoculars_models])):
        llama_repo(hub, tmp_path, repo_id, TINY_LLAMA, seed=seed)
    rows = style_rows()
    found, unavailable = load_detectors(cfg, FakeEmbedder(),
                                        {"detector": rows, "val": rows[:4], "eval": []})
    assert list(unavailable) == [OTHER_FAMILY]
    assert {"RADAR", "Fast-DetectGPT", "Binoculars"} <= set(found)
    p_ai = {name: found[name].score([rows[0]["human"], rows[0]["ai"]])
            for name in ("RADAR", "Fast-DetectGPT", "Binoculars")}
    assert all(np.isfinite(p).all() and ((p > 0) & (p < 1)).all() for p in p_ai.values())


# ---------------------------------------------------------------- EditLens


def editlens_rows(split: str) -> list[dict]:
    """Rows with the columns of the EditLens authors' released splits (val.csv of the EditLens
    repository): per source paragraph a human-written row (text = source_text), an AI-edited and
    an AI-generated one."""
    rows = []
    for k in range(2):
        source = f"{split} paragraph {k}: the ferry left at 9 and the pier was wet."
        for kind, text, model, label in (
                ("human_written", source, "human", 0),
                ("ai_edited", f"{split} paragraph {k}: The ferry departed at 9; the pier was damp.",
                 "gpt-4.1", -1),
                ("ai_generated", f"Overall, {split} ferry {k} represents a vital link.",
                 "claude-sonnet-4-20250514", 1)):
            rows.append({"text_id": f"{split}-{k}-{kind}", "text": text, "cosine_score": 0.5,
                         "soft_ngrams_score": 0.5, "text_type": kind, "model": model,
                         "source": "news", "source_id": f"{split}-{k}", "source_text": source,
                         "split": split, "label": label})
    return rows


@pytest.fixture
def editlens(hub, tmp_path):
    from helpers.data.sources import EDITLENS_ID

    splits = {s: editlens_rows(s) for s in ("train", "val", "test")}
    add_repo(hub, EDITLENS_ID, parquet_dataset_files(tmp_path / "editlens", splits), "dataset")
    return splits


@pytest.mark.parametrize("split, hub_split", [("train", "train"), ("dev", "test")])
def test_editlens_loads_offline_from_the_hub_cache_as_pairs(editlens, split, hub_split):
    from helpers.data.sources import load_editlens, paragraph_key

    rows = load_editlens(split)
    expected = [r for r in editlens[hub_split] if r["text_type"] != "human_written"]
    assert [r["id"] for r in rows] == [r["text_id"] for r in expected]
    for row, source in zip(rows, expected):
        assert (row["human"], row["ai"]) == (source["source_text"], source["text"])
        assert row["ai_model"] == source["model"] and row["domain"] == "news"
        assert row["group"] == paragraph_key(source["source_text"])


def test_editlens_reads_the_human_ai_column_variant(hub, tmp_path):
    from helpers.data.sources import EDITLENS_ID, load_editlens

    rows = [{"id": "a", "human": "A person wrote this.", "ai": "An AI wrote this.",
             "domain": "essays", "model": "m"}]
    files = parquet_dataset_files(tmp_path / "variant", {"train": rows, "test": rows})
    add_repo(hub, EDITLENS_ID, files, "dataset")
    assert [(r["id"], r["human"], r["ai"], r["domain"]) for r in load_editlens("train")] == \
        [("a", "A person wrote this.", "An AI wrote this.", "essays")]


def test_editlens_offline_without_a_copy_fails_in_one_line(hub):
    from helpers.core.io import DataError
    from helpers.data.sources import load_editlens

    with pytest.raises(DataError) as err:
        load_editlens("train")
    message = str(err.value)
    assert "\n" not in message
    assert "pangram/editlens_iclr" in message and "hf download" in message and "l2r" in message


# ---------------------------------------------------------------- the paper preset

# MiniCPM5-1B's model card: "standard LlamaForCausalLM", 24 layers, grouped-query attention with 16
# query and 2 key-value heads, 131,072 positions; its MLX 4-bit release quantizes 169 linears
# (24 x 7 + an untied lm_head). Its config.json could not be read here: the stand-in keeps that
# architecture (model_type "llama", 16 and 2 heads, untied head) at toy sizes and assumes
# rope_theta and the head size.
MINICPM5 = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "intermediate_size": 128, "num_attention_heads": 16, "num_key_value_heads": 2,
            "head_dim": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "max_position_embeddings": 131072}
PAPER_OVERRIDES = dict(min_words=3, n_val_paragraphs=1, n_eval=2, calib_texts=2,
                       calib_max_tokens=32, sft_steps=1, batch_size=2, max_seq_len=512,
                       val_examples=1, checkpoint_every=1, val_every=1)


@pytest.fixture
def paper(editlens, hub, tmp_path, runs):
    """get_config("paper") at toy sizes, with MiniCPM5-1B and EditLens in the hub cache and
    notebook 01's data prepared from EditLens."""
    from helpers.core.config import get_config
    from helpers.data.prepare import prepare, save_prepared

    cfg = get_config("paper", **PAPER_OVERRIDES)
    assert (cfg.model, cfg.data_source) == ("openbmb/MiniCPM5-1B", "editlens")
    llama_repo(hub, tmp_path, cfg.model, MINICPM5)
    save_prepared(cfg, prepare(cfg))
    return cfg


def test_paper_preset_quantizes_and_trains_minicpm5_offline(paper):
    """Notebooks 02-04 on the paper preset: load MiniCPM5-1B from the hub cache, scan its
    sensitivity, save the mixed-precision model, put LoRA on every target linear of every block
    of it and take one SFT step: the loss is finite and every LoRA B moves off zero."""
    import mlx.core as mx

    from helpers.core.models import base_model_spec, load_model, save_mlx_model
    from helpers.data.prepare import load_prepared
    from helpers.quant.allocate import allocate
    from helpers.quant.apply import clone_model, quantize_model
    from helpers.quant.scan import sensitivity_scan
    from helpers.quant.units import bits_per_weight
    from helpers.train.adapters import ADAPTER_FILE
    from helpers.train.base import load_base
    from helpers.train.lora import add_lora, lora_config, lora_layers
    from helpers.train.sft import train_sft

    cfg = paper
    model, tokenizer, config = load_model(cfg.model, keep_quantized=False, return_config=True)
    assert len(model.layers) == 2 and not config["tie_word_embeddings"]
    sens = sensitivity_scan(cfg, model, tokenizer, progress=False)
    assert len(sens["units"]) == 2 * 7 + 2  # every block linear, the embedding, the lm_head
    chosen = allocate(sens, cfg.target_bpw, sens["candidate_bits"], cfg.protect)
    assert bits_per_weight(chosen, sens["units"], cfg.group_size) <= cfg.target_bpw
    qmodel, qconfig = quantize_model(clone_model(model), config, chosen,
                                           cfg.group_size)
    save_mlx_model(qmodel, tokenizer, {**qconfig, "quantized_from": cfg.model},
                   cfg.path("quantized_model"))
    assert base_model_spec(cfg) == str(cfg.path("quantized_model"))

    base, tokenizer = load_base(cfg)
    add_lora(base, lora_config(cfg, "sft"), seed=cfg.seed)
    wrapped = {name for name, _ in lora_layers(base)}
    assert wrapped == {f"model.layers.{i}.{t}" for i in range(2) for t in cfg.lora_targets}
    log = train_sft(base, tokenizer, cfg, load_prepared(cfg))
    losses = [row["loss"] for row in log if row["split"] == "train"]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert all(mx.abs(m.lora_b).max().item() > 0 for _, m in lora_layers(base))
    assert (cfg.path("adapters/sft") / ADAPTER_FILE).exists()


def test_lora_targets_missing_from_the_architecture_are_an_error(paper):
    from helpers.core.config import get_config
    from helpers.train.base import load_base
    from helpers.train.lora import add_lora, lora_config

    cfg = get_config("paper", **PAPER_OVERRIDES,
                     lora_targets=("self_attn.q_proj", "self_attn.qkv_proj"))
    model, _ = load_base(cfg)
    with pytest.raises(ValueError, match=r"\['self_attn.qkv_proj'\] are not linears of block 0"):
        add_lora(model, lora_config(cfg, "sft"))
