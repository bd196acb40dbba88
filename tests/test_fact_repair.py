"""The sentence repair of the fact switch: lost facts come back, in the right place, and none is lost."""
from __future__ import annotations

import pytest

from helpers.core.text_measures import fact_preservation
from helpers.infer.fact_repair import (
    best_place,
    repair_facts,
    sentence_candidates,
    sentences,
    sentences_with_lost_facts,
    word_overlap,
)

DRAFT = "The bridge opened in 1932. It cost $4.5 million. Mayor Jane Holt cut the ribbon."


def never_called(texts):
    raise AssertionError(f"nothing to repair, yet asked to rewrite {texts}")


def test_sentences_and_overlap():
    assert sentences(DRAFT) == ["The bridge opened in 1932.", "It cost $4.5 million.",
                                "Mayor Jane Holt cut the ribbon."]
    assert sentences("  ") == []
    assert word_overlap("It cost a lot.", "It cost $4.5 million.") == 2 / 7
    assert word_overlap("", "anything") == 0.0


def test_only_the_sentences_holding_lost_facts_are_rewritten():
    output = "They opened the bridge in 1932. Mayor Jane Holt cut the ribbon that day."
    assert sentences_with_lost_facts(DRAFT, output) == [1]
    asked = []

    def rewrite_sentences(texts):
        asked.append(texts)
        return [["The bill was large.", "The bill came to $4.5 million."]]

    # neither output sentence shares a word with the lost one: the nearer in position is chosen
    # (a tie here, so the first); replacing it would lose 1932, so the repair goes after it
    assert repair_facts([DRAFT], [output], rewrite_sentences) == [
        "They opened the bridge in 1932. The bill came to $4.5 million. "
        "Mayor Jane Holt cut the ribbon that day."]
    assert asked == [["It cost $4.5 million."]]


def test_repair_replaces_the_most_similar_sentence():
    output = "The bridge opened in 1932. It cost a lot. Mayor Jane Holt cut the ribbon."
    repaired = repair_facts([DRAFT], [output], lambda texts: [["It cost $4.5 million to build."]])
    assert repaired == ["The bridge opened in 1932. It cost $4.5 million to build. "
                        "Mayor Jane Holt cut the ribbon."]


def test_no_candidate_keeping_the_facts_puts_the_draft_sentence_back():
    output = "The bridge opened in 1932. It cost a lot. Mayor Jane Holt cut the ribbon."
    repaired = repair_facts([DRAFT], [output], lambda texts: [["It was costly.", "  "]])
    assert repaired == [DRAFT]


def test_an_output_keeping_every_fact_is_left_alone():
    outputs = ["In 1932 the bridge opened; it cost $4.5 million and Mayor Jane Holt cut the ribbon.",
               "No facts here."]
    assert repair_facts([DRAFT, "no facts at all"], outputs, never_called) == outputs


def test_an_empty_output_gets_every_lost_sentence():
    assert repair_facts([DRAFT], [""], lambda texts: [[t] for t in texts]) == [DRAFT]


@pytest.mark.parametrize("output", [
    "In 1932 a bridge opened. Jane Holt was there.",
    "It cost a lot, and Mayor Jane Holt cut the ribbon in 1931.",
    "Opened in 1932 for $4.5 million.",
])
def test_every_fact_inside_one_sentence_comes_back(output):
    repaired = repair_facts([DRAFT], [output], lambda texts: [["Something else."] for _ in texts])
    assert fact_preservation(DRAFT, repaired[0]) == 1.0


def test_best_place_prefers_overlap_then_position():
    outs = ["Alpha beta.", "Gamma delta.", "Epsilon zeta."]
    assert best_place("gamma rays", 0.9, outs) == 1
    assert best_place("nothing shared", 0.9, outs) == 2
    assert best_place("nothing shared", 0.1, outs) == 0


def test_samples_are_drawn_only_for_sentences_whose_plain_rewrite_loses_a_fact():
    texts = ["Rome had 7 hills.", "Paris hosted 3 events.", "No facts here."]
    plain = {"Rome had 7 hills.": "Rome had seven hills.",  # loses the 7
             "Paris hosted 3 events.": "Paris hosted 3 events.", "No facts here.": "Nothing."}
    asked = []

    def sample(ts):
        asked.append(ts)
        return [f"sample {i}" for i in range(len(ts))]

    candidates = sentence_candidates(texts, 2, lambda ts: [plain[t] for t in ts], sample)
    assert asked == [["Rome had 7 hills.", "Rome had 7 hills."]]
    assert candidates == [["Rome had seven hills.", "sample 0", "sample 1"],
                          ["Paris hosted 3 events."], ["Nothing."]]
    assert sentence_candidates(texts[1:], 3, lambda ts: [plain[t] for t in ts], never_called) == \
        [["Paris hosted 3 events."], ["Nothing."]]
