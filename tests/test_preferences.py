"""Ranked DPO pairs: the combined score, the ranking and the pairs, on hand-made scores."""
import math

import mlx.core as mx
import numpy as np
import pytest

from helpers.core.config import get_config
from helpers.train import preferences

from conftest import make_tiny_model

WEIGHTS = {"judge": 1.0, "facts": 2.0}


def test_combined_scores_is_the_weighted_sum():
    total = preferences.combined_scores({"judge": [0.5, 0.2], "facts": [1.0, 0.5],
                                         "unused": [9.0, 9.0]}, WEIGHTS)
    assert total.tolist() == [2.5, 1.2]


def test_combined_scores_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\['facts'\]"):
        preferences.combined_scores({"judge": [0.5]}, WEIGHTS)
    with pytest.raises(ValueError, match="different lengths"):
        preferences.combined_scores({"judge": [0.5, 0.1], "facts": [1.0]}, WEIGHTS)
    with pytest.raises(ValueError, match=r"NaN in component\(s\) \['judge'\]"):
        preferences.combined_scores({"judge": [float("nan")], "facts": [1.0]}, WEIGHTS)


def test_rank_candidates_best_first_ties_in_order_empty_last():
    scores = {"judge": [0.1, 0.9, 0.1, 0.5, 0.95], "facts": [0.5, 0.0, 0.5, 1.0, 1.0]}
    # totals 1.1, 0.9, 1.1, 2.5, 2.95; candidate 4 is an empty text
    assert preferences.rank_candidates(scores, WEIGHTS) == [4, 3, 0, 2, 1]
    assert preferences.rank_candidates(scores, WEIGHTS, empty=[0, 0, 0, 0, 1]) == [3, 0, 2, 1, 4]
    assert preferences.rank_candidates(scores, {"judge": 1.0}) == [4, 1, 3, 0, 2]


ROWS = [{"id": "a", "group": 1, "prompt": "draft a", "chosen": "human a"},
        {"id": "b", "group": 2, "prompt": "draft b", "chosen": "human b"},
        {"id": "c", "group": 3, "prompt": "draft c", "chosen": "human c"}]
SAMPLES = [["a0", "a1", "a2"], ["b0", "b1"], ["c0", "c1"]]
SCORES = [{"judge": [0.2, 0.8, 0.5], "facts": [1.0, 1.0, 0.0]},  # totals 2.2, 2.8, 0.5
          {"judge": [0.3, 0.3], "facts": [0.5, 0.5]},  # a tie: no pair
          {"judge": [0.0, 1.0], "facts": [0.25, 0.0]}]  # totals 0.5, 1.0


def test_build_pairs_best_over_worst():
    pairs = preferences.build_pairs(ROWS, SAMPLES, SCORES, WEIGHTS)
    assert [(p["id"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("a:ranked", "draft a", "a1", "a2"), ("c:ranked", "draft c", "c1", "c0")]
    assert pairs[0]["chosen_scores"] == {"judge": 0.8, "facts": 1.0, "total": 2.8}
    assert pairs[0]["rejected_scores"] == {"judge": 0.5, "facts": 0.0, "total": 0.5}


def test_build_pairs_human_chosen():
    pairs = preferences.build_pairs(ROWS, SAMPLES, SCORES, WEIGHTS, chosen="human")
    assert [(p["chosen"], p["rejected"], p["chosen_source"]) for p in pairs] == [
        ("human a", "a2", "human"), ("human c", "c0", "human")]
    assert all(math.isnan(v) for v in pairs[0]["chosen_scores"].values())


def test_build_pairs_skips_identical_texts_and_ranks_empty_last():
    samples = [["same", "same", "x"], ["", "b1"], ["c0", "c1"]]
    scores = [{"judge": [0.9, 0.1, 0.5], "facts": [0.0, 0.0, 0.0]},  # best "same", worst "same"
              {"judge": [0.9, 0.1], "facts": [1.0, 0.0]},  # the empty one scores best: still last
              SCORES[2]]
    pairs = preferences.build_pairs(ROWS, samples, scores, WEIGHTS)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b1", ""), ("c1", "c0")]
    with pytest.raises(ValueError, match="'best' or 'human'"):
        preferences.build_pairs(ROWS, SAMPLES, SCORES, WEIGHTS, chosen="worst")
    with pytest.raises(ValueError, match="one of each per draft"):
        preferences.build_pairs(ROWS[:2], SAMPLES, SCORES, WEIGHTS)


class ListTokenizer:
    """Texts are space-separated token ids."""

    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]


def test_mean_surprise_matches_log_softmax_by_hand():
    model, _ = make_tiny_model()
    texts = ["5 17 301 4000 9", "12 7", "3"]
    got = preferences.mean_surprise(model, ListTokenizer(), texts, batch_size=2)
    for text, value in zip(texts[:2], got[:2]):
        tokens = [int(t) for t in text.split()]
        logits = np.array(model(mx.array([tokens]))[0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - logits.max(1, keepdims=True)
        expected = -np.mean([logp[j, tokens[j + 1]] for j in range(len(tokens) - 1)])
        assert value == pytest.approx(expected, rel=1e-4)
    assert math.isnan(got[2])  # one token: nothing to predict


def test_with_ranked_keeps_unranked_drafts(monkeypatch):
    cfg = get_config("smoke", dpo_steps=2, dpo_batch_size=1)
    pairs = [{"id": i, "prompt": f"draft {i}", "chosen": f"human {i}"} for i in "xyz"]
    monkeypatch.setattr(preferences, "ranked_pairs", lambda cfg, m, t, rows, j, e: [
        {"id": f"{rows[1]['id']}:ranked"}])  # only draft y gave a pair
    got = preferences.with_ranked(cfg, None, None, pairs, None, None)
    assert [p["id"] for p in got] == ["y:ranked", "z", "x"]


def test_unknown_pair_source_is_named():
    cfg = get_config("smoke", dpo_pair_source="best")
    with pytest.raises(ValueError, match="dpo_pair_source='best'"):
        preferences.training_pairs(cfg, None, None, {"dpo": []})


def test_unknown_chosen_is_named():
    cfg = get_config("smoke", dpo_chosen="worst")
    with pytest.raises(ValueError, match="dpo_chosen='worst'"):
        preferences.training_pairs(cfg, None, None, {"dpo": []})


def test_loops_only_keeps_the_looping_on_policy_samples(monkeypatch):
    loop = "one two three four five six seven eight and one two three four five six seven eight"
    cfg = get_config("smoke", on_policy_rejected=True, n_on_policy=3, on_policy_loops_only=True)
    pairs = [{"id": i, "prompt": f"draft {i}", "chosen": f"human {i}", "rejected": f"ai {i}"}
             for i in "xyz"]
    monkeypatch.setattr(preferences, "on_policy_samples",
                        lambda cfg, m, t, drafts: ["fine x", loop, "fine z"])
    got = preferences.training_pairs(cfg, None, None, {"dpo": pairs})
    assert [(p["id"], p["rejected"]) for p in got] == [
        ("x", "ai x"), ("y:on-policy", loop), ("y", "ai y"), ("z", "ai z")]
