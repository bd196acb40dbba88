import math

import numpy as np
import pytest

from helpers.core.models import ModelNotAvailable
from helpers.evaluate.embedding import EmbeddingDetector
from helpers.evaluate.hub import locate
from helpers.evaluate.platt import fit_platt
from helpers.evaluate.radar import Radar
from helpers.evaluate.trained_detectors import (
    FUNCTION_WORDS,
    PUNCTUATION,
    NgramDetector,
    StyleDetector,
    check_disjoint,
    detector_rows,
    judge_rows,
    style_features,
)
from helpers.evaluate.zero_shot import (
    Binoculars,
    FastDetectGPT,
    binoculars_score,
    load_binoculars,
    sampling_discrepancy,
)

P = np.log([[0.75, 0.25]], dtype=np.float32)  # one position of a 2-token vocabulary


def test_sampling_discrepancy_by_hand():
    # Bernoulli(0.75): observing the likely token, (log .75 - E[log p]) / sd = sqrt(.25 / .75)
    one = sampling_discrepancy(P[None], np.array([[0]]), np.ones((1, 1)))
    assert one == pytest.approx([1 / math.sqrt(3)], rel=1e-5)
    unlikely = sampling_discrepancy(P[None], np.array([[1]]), np.ones((1, 1)))
    assert unlikely == pytest.approx([-math.sqrt(3)], rel=1e-5)
    # two such positions: sums over positions, so sqrt(2) * 1/sqrt(3); a masked third is ignored
    logits = np.concatenate([P, P, np.log([[0.5, 0.5]])])[None]
    two = sampling_discrepancy(logits, np.array([[0, 0, 1]]), np.array([[1, 1, 0]]))
    assert two == pytest.approx([math.sqrt(2 / 3)], rel=1e-5)


def test_sampling_discrepancy_matches_the_reference_formula():
    import torch
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 7, 50)).astype(np.float32) * 3
    labels = rng.integers(0, 50, size=(1, 7))
    # Fast-DetectGPT's get_sampling_discrepancy_analytic (reference = scoring model)
    lprobs = torch.log_softmax(torch.tensor(logits), dim=-1)
    probs = lprobs.exp()
    ll = lprobs.gather(-1, torch.tensor(labels)[..., None]).squeeze(-1)
    mean = (probs * lprobs).sum(-1)
    var = (probs * lprobs.square()).sum(-1) - mean.square()
    expected = ((ll.sum(-1) - mean.sum(-1)) / var.sum(-1).sqrt()).item()
    ours = sampling_discrepancy(logits, labels, np.ones((1, 7)))
    assert ours == pytest.approx([expected], rel=1e-4)


def test_binoculars_score_by_hand():
    uniform = np.zeros((1, 3, 4), dtype=np.float32)
    assert binoculars_score(uniform, uniform, np.array([[1, 2, 3]]),
                                      np.ones((1, 3))) == pytest.approx([1.0])
    # same Bernoulli(.75) models, likely token: -log .75 / H(.75)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert binoculars_score(P[None], P[None], np.array([[0]]), np.ones((1, 1))) == \
        pytest.approx([-math.log(0.75) / entropy], rel=1e-5)
    # observer sure of token 0: cross-perplexity = -log q(0) = -log .75
    sure = np.log([[0.999999, 0.000001]], dtype=np.float32)[None]
    assert binoculars_score(sure, P[None], np.array([[1]]), np.ones((1, 1))) == \
        pytest.approx([math.log(4) / -math.log(0.75)], rel=1e-3)


class CharTokenizer:
    """Token id = character code: enough to feed a tiny model real sequences."""

    def encode(self, text):
        return [ord(c) % 1000 for c in text]


def test_batched_scores_equal_one_by_one(tiny_model):
    model, _ = tiny_model
    texts = ["a short one", "x", "a much longer text than the first one", "medium text", ""]
    batched = FastDetectGPT(model, CharTokenizer(), batch_size=3).raw_scores(texts)
    single = FastDetectGPT(model, CharTokenizer(), batch_size=1).raw_scores(texts)
    assert np.isnan(batched[[1, 4]]).all()  # under two tokens: nothing to score
    np.testing.assert_allclose(batched, single, rtol=1e-4)
    trimmed = FastDetectGPT(model, CharTokenizer(), max_tokens=5).raw_scores(texts[2:3])
    assert trimmed[0] == pytest.approx(
        FastDetectGPT(model, CharTokenizer()).raw_scores([texts[2][:5]])[0], rel=1e-4)


def test_binoculars_of_a_model_with_itself_is_finite(tiny_model):
    model, _ = tiny_model
    det = Binoculars(model, model, CharTokenizer())
    scores = det.raw_scores(["some text here", "and more text"])
    assert np.isfinite(scores).all() and (scores < 0).all()  # -(log-ppl / x-ppl), both positive


def test_calibration_is_cached_and_monotone(tiny_model, tmp_path):
    model, _ = tiny_model
    det = FastDetectGPT(model, CharTokenizer())
    texts = ["aaaa aaaa aaaa", "abcabcabc", "the cat sat", "zq xv jk", "hello there", "mm nn oo"]
    labels = [0, 0, 0, 1, 1, 1]
    det.calibrate(texts, labels, tmp_path / "cal.json", key="tiny")
    assert (tmp_path / "cal.json").exists()
    again = FastDetectGPT(model, CharTokenizer())
    again.raw_scores = lambda _texts: pytest.fail("a cached calibration must not rescore")
    assert again.calibrate(texts, labels, tmp_path / "cal.json", key="tiny").platt == det.platt
    raw = det.raw_scores(texts)
    p = det.score(texts)
    assert ((p > 0) & (p < 1)).all()
    # a monotone map: the order of P(AI) is the order of the raw score (reversed if a < 0)
    assert np.array_equal(np.argsort(det.platt[0] * raw), np.argsort(p))


def test_fit_platt_learns_direction():
    a, b = fit_platt([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])
    assert a > 0 and 1 / (1 + math.exp(-(a * 0.5 + b))) == pytest.approx(0.5, abs=0.05)


def test_radar_loader_fails_plainly_offline():
    # conftest sets HF_HUB_OFFLINE=1 and the shared assets have no RADAR copy
    with pytest.raises(ModelNotAvailable, match=r"RADAR-Vicuna-7B.*not available.*HF_HUB_OFFLINE"):
        Radar("TrustSafeAI/RADAR-Vicuna-7B")


def test_locate_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("helpers.evaluate.hub.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotAvailable, match="cannot be reached.*hf download"):
        locate("nobody/no-such-model")


def test_locate_prefers_local_paths(tmp_path):
    assert locate(str(tmp_path)) == str(tmp_path)


class FakeEmbedder:
    """Two features: does the text say 'human', does it say 'machine'."""
    spec = "fake"

    def __call__(self, texts):
        return np.array([[("human" in t) * 1.0, ("machine" in t) * 1.0] for t in texts])


def test_embedding_detector_trains_saves_and_reloads(tmp_path):
    embed = FakeEmbedder()
    human = [f"human text {i}" for i in range(10)]
    ai = [f"machine text {i}" for i in range(10)]
    det = EmbeddingDetector.train(embed, human + ai, [0] * 10 + [1] * 10,
                                            human[:3] + ai[:3], [0] * 3 + [1] * 3)
    p = det.score(["human words", "machine words"])
    assert p[0] < 0.5 < p[1]
    det.save(tmp_path, "fp1")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["minilm_lr.json", "minilm_lr.safetensors"]
    loaded = EmbeddingDetector.load(tmp_path, embed, "fp1")
    np.testing.assert_allclose(loaded.score(["human words", "machine words"]), p, rtol=1e-6)
    assert EmbeddingDetector.load(tmp_path, embed, "other data") is None


def test_binoculars_skips_plainly_without_its_models():
    with pytest.raises(ModelNotAvailable, match="nobody/observer"):
        load_binoculars("nobody/observer", "nobody/performer")


def test_radar_scores_with_a_tiny_local_classifier(tmp_path):
    """The RADAR code path on a random 1-layer RoBERTa saved locally (RADAR's weights need a
    download): P(AI) is softmax[:, 0], batching and truncation change nothing else."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from helpers.core.models import resolve
    tokenizer = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, num_labels=2,
                           max_position_embeddings=520, pad_token_id=tokenizer.pad_token_id)
    RobertaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    radar = Radar(str(tmp_path), max_tokens=16, batch_size=2)
    texts = ["short", "a somewhat longer text about rivers", "word " * 100]
    p = radar.score(texts)
    with torch.inference_mode():
        for text, value in zip(texts, p):
            enc = radar.tokenizer(text, truncation=True, max_length=16, return_tensors="pt")
            assert value == pytest.approx(torch.softmax(radar.model(**enc).logits, -1)[0, 0].item(),
                                          abs=1e-5)
    assert ((p > 0) & (p < 1)).all()


HUMAN_STYLE = ["we reckon the old mill shut in spring, so the lads went north",
               "honestly the bus was late again and nobody cared much",
               "my gran kept bees; the honey was dark and odd",
               "the lads reckon the pub quiz is rigged, and so do I",
               "rain again. we stayed in and played cards till late",
               "the old mill road floods every spring, ask anyone",
               "nobody reckons the ferry will run on time today",
               "odd weather: hail, then sun, then hail again",
               "we walked the dog past the mill and back",
               "gran says the bees hate thunder, and she is right"]
AI_STYLE = ["Furthermore, it is important to note that the mill played a crucial role.",
            "Moreover, the transportation system demonstrates significant challenges.",
            "Additionally, beekeeping represents a fascinating and multifaceted tradition.",
            "Furthermore, community events foster a vibrant sense of belonging.",
            "Moreover, inclement weather significantly impacts recreational activities.",
            "Additionally, infrastructure plays a crucial role in seasonal flooding.",
            "Furthermore, ferry services represent a vital transportation link.",
            "Moreover, weather patterns demonstrate remarkable variability.",
            "Additionally, walking pets fosters significant physical well-being.",
            "Furthermore, bees demonstrate a fascinating sensitivity to storms."]


def style_rows(n=10):
    return [{"human": h, "ai": a} for h, a in zip(HUMAN_STYLE[:n], AI_STYLE[:n])]


@pytest.mark.parametrize("cls", [NgramDetector, StyleDetector])
def test_linear_text_detectors_train_save_and_reload(cls, tmp_path):
    rows = style_rows()
    det = cls.train(rows[:8], rows[8:])
    p = det.score(HUMAN_STYLE[8:] + AI_STYLE[8:])
    assert (p[:2] < 0.5).all() and (p[2:] > 0.5).all()
    assert det.meta["C"] in cls.c_grid and det.meta["n_train"] == 16
    det.save(tmp_path, "fp1")
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"{cls.slug}.json",
                                                          f"{cls.slug}.safetensors"]
    loaded = cls.load(tmp_path, "fp1")
    np.testing.assert_allclose(loaded.score(HUMAN_STYLE[8:] + AI_STYLE[8:]), p, rtol=1e-5)
    assert cls.load(tmp_path, "other data") is None
    assert cls.load(tmp_path, "fp1", slug="judge") is None  # another detector's files


def test_style_features_by_hand():
    f = style_features("The cat sat. It ran, and the dog ran too!")
    # 10 words; sentences of 3 and 7 words; distinct words 8 of 10; one comma, one "!"
    assert f[0] == pytest.approx(math.log(10))
    assert f[1:3] == pytest.approx([5.0, 2.0])
    assert f[5] == pytest.approx(0.8)
    punct = dict(zip(PUNCTUATION, f[6:6 + len(PUNCTUATION)]))
    assert punct[","] == pytest.approx(0.1) and punct["!"] == pytest.approx(0.1)
    rates = dict(zip(FUNCTION_WORDS, f[-len(FUNCTION_WORDS):]))
    assert rates["the"] == pytest.approx(0.2) and rates["and"] == pytest.approx(0.1)


def test_check_disjoint_names_a_shared_paragraph():
    rows = style_rows(3)
    check_disjoint(rows[:2], rows[2:], "fine")
    leaked = [{"human": "  " + rows[0]["human"].upper() + "\n", "ai": "something else"}]
    with pytest.raises(ValueError, match=r"eval drafts: 1 paragraph\(s\) are in both sets"):
        check_disjoint(rows, leaked, "eval drafts")  # case and spacing do not hide it


@pytest.fixture(scope="module")
def smoke_splits():
    from helpers.core.config import get_config
    from helpers.data.prepare import prepare
    cfg = get_config("smoke")
    return cfg, prepare(cfg)


def test_detector_rows_judge_rows_and_eval_drafts_are_disjoint(smoke_splits):
    from helpers.data.sources import paragraph_key
    cfg, splits = smoke_splits
    train, judge = detector_rows(cfg, splits), judge_rows(cfg, splits)
    assert len(train) == len(judge) == cfg.detector_train_pairs
    keys = lambda rows: {paragraph_key(r[k]) for r in rows for k in ("human", "ai")}  # noqa: E731
    evaluation, val = keys(splits["eval"]), keys(splits["val"])
    assert not keys(train) & evaluation
    assert not keys(judge) & keys(train) and not keys(judge) & evaluation
    assert not keys(judge) & val
    assert len({r["group"] for r in judge}) == len(judge)  # one row per paragraph
