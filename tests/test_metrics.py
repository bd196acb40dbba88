import math

import numpy as np
import pytest

from helpers.core import text_measures
from helpers.core.statistics import (
    auroc,
    bootstrap_ci,
    gap_closed,
    paired_bootstrap_ci,
    threshold_at_fpr,
)
from helpers.core.text_measures import load_slop_phrases
from helpers.evaluate.meaning import meaning_similarity
from helpers.infer.rewrite import best_by_facts

CRAFTED = ("On March 3, 2021, Dr. Alice Smith paid $1,200 (15%) to Acme Corp in New York; see "
           "https://example.com/a1. The deal closed on 2021-04-01. However, Bob agreed.")


def test_bootstrap_ci_of_a_constant_is_the_constant_and_drops_nans():
    ci = bootstrap_ci([0.5, 0.5, float("nan"), 0.5], n_boot=200)
    assert ci == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 3}
    assert bootstrap_ci([float("nan")])["mean"] is None


def test_bootstrap_ci_brackets_the_mean():
    values = np.random.default_rng(1).normal(3.0, 1.0, 400)
    ci = bootstrap_ci(values, n_boot=500)
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 / 20, rel=0.25)  # 2 * 1.96 * sd / sqrt(n)


def test_auroc_perfect_reversed_and_tied():
    assert auroc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert auroc([0.7, 0.8], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    assert auroc([0.1, 0.6], [0.5, 0.9]) == 0.75
    ci = paired_bootstrap_ci(auroc, [0.1, 0.2, 0.3], [0.7, 0.8, 0.9], n_boot=100)
    assert (ci["mean"], ci["lo"], ci["hi"]) == (1.0, 1.0, 1.0)


def test_threshold_at_fpr():
    human = np.arange(1, 11) / 10  # 0.1 ... 1.0
    assert threshold_at_fpr(human, 0.05) == 1.0  # 0 of 10 humans may be flagged
    t = threshold_at_fpr(human, 0.2)
    assert t == 0.8 and np.mean(human > t) == 0.2


def test_gap_closed():
    assert gap_closed([0.9, 0.9], [0.5, 0.5], [0.1, 0.1]) == pytest.approx(0.5)
    assert gap_closed([0.9], [0.9], [0.1]) == 0.0
    assert gap_closed([0.9], [0.1], [0.1]) == 1.0
    assert gap_closed([0.4], [0.2], [0.4]) is None  # no gap to close


def test_slop_rate_counts_phrases_per_1k_tokens():
    phrases = load_slop_phrases()
    text = "We delve into the data. It is important to note the results."  # 12 word tokens
    assert text_measures.slop_per_1k([text, "Plain words only."], phrases) == [
        pytest.approx(1000 * 2 / 12), 0.0]


def test_fact_extraction_on_a_crafted_sentence():
    facts = text_measures.extract_facts(CRAFTED)
    assert facts == {
        "urls": {"https://example.com/a1"},
        "dates": {"March 3, 2021", "2021-04-01"},
        "numbers": {"1200", "15"},
        "names": {"Alice Smith", "Acme Corp", "New York", "Bob"},
    }


def test_fact_preservation():
    assert text_measures.fact_preservation(CRAFTED, CRAFTED) == 1.0
    kept = "Alice Smith paid 1200 dollars to Acme Corp on March 3, 2021."
    # survive: the first date, 1200, Alice Smith, Acme Corp = 4 of 9 facts
    assert text_measures.fact_preservation(CRAFTED, kept) == pytest.approx(4 / 9)
    assert math.isnan(text_measures.fact_preservation("no facts here at all.", "anything"))


FIGURES = ("Revenue grew 3.5% to $2.75 billion in 2021, with 1,200,000 users. On 3 May 2021 "
           "Maria Lopez of the World Health Organization posted it at www.who.int/news.")


def test_numbers_with_commas_decimals_and_percent():
    facts = text_measures.extract_facts(FIGURES)
    assert facts["numbers"] == {"3.5", "2.75", "2021", "1200000"}
    assert facts["dates"] == {"3 May 2021"} and facts["urls"] == {"www.who.int/news"}
    assert facts["names"] == {"Maria Lopez", "World Health Organization"}


@pytest.mark.parametrize("output,missing", [
    (FIGURES, []),  # everything kept
    # kept in other words: commas dropped, "percent", the date reordered, the URL's full stop
    ("In 2021 revenue rose 3.5 percent to $2.75 billion and 1200000 users; Maria Lopez of the "
     "World Health Organization posted it on May 3rd, 2021 at www.who.int/news.", []),
    # dropped: the user count, the URL, the organisation
    ("Revenue grew 3.5% to $2.75 billion in 2021. On 3 May 2021 Maria Lopez posted it.",
     [("urls", "www.who.int/news"), ("numbers", "1200000"),
      ("names", "World Health Organization")]),
    # altered: 3.5 -> 3.6, 1,200,000 -> 1,300,000, 3 May -> 4 May, Lopez -> Lopes
    ("Revenue grew 3.6% to $2.75 billion in 2021, with 1,300,000 users. On 4 May 2021 Maria "
     "Lopes of the World Health Organization posted it at www.who.int/news.",
     [("dates", "3 May 2021"), ("numbers", "1200000"), ("numbers", "3.5"),
      ("names", "Maria Lopez")]),
    # a year kept as a number but not as part of the date: the day was dropped
    ("Revenue grew 3.5% to $2.75 billion in May 2021, with 1,200,000 users. Maria Lopez of the "
     "World Health Organization posted it at www.who.int/news.", [("dates", "3 May 2021")]),
])
def test_missing_facts_kept_dropped_altered(output, missing):
    assert text_measures.missing_facts(FIGURES, output) == missing
    n = sum(len(v) for v in text_measures.extract_facts(FIGURES).values())
    assert text_measures.fact_preservation(FIGURES, output) == pytest.approx(1 - len(missing) / n)


def test_dates_match_whatever_the_format():
    for same in ("2021-05-03", "May 3, 2021", "3rd May 2021", "May 3rd, 2021"):
        assert text_measures.fact_preservation("It opened on 3 May 2021.", f"Opened {same}.") == 1.0
    assert text_measures.fact_preservation("It opened on 3 May 2021.", "Opened May 3.") == 0.0  # no year
    assert text_measures.fact_preservation("Due Sept. 5.", "Due on 5 September.") == 1.0
    assert text_measures.fact_preservation("Signed 3/5/2021.", "Signed 5/3/2021.") == 0.0  # not reordered


def test_best_by_facts_keeps_most_facts_then_meaning_then_first():
    source = "Alice Smith paid $1,200 to Acme Corp on 3 May 2021."
    candidates = ["Alice paid a lot.",  # 0 of 4 facts
                  "Alice Smith paid 1,300 to Acme Corp on 3 May 2021.",  # 3 of 4
                  "On May 3rd, 2021 Alice Smith paid Acme Corp $1200.",  # 4 of 4
                  "Alice Smith gave Acme Corp 1,200 dollars on 3 May 2021."]  # 4 of 4
    assert best_by_facts(source, candidates) == 2  # a tie with 3: the first wins
    closer = lambda s, cands: [0.1, 0.2, 0.3, 0.9]  # noqa: E731
    assert best_by_facts(source, candidates, closer) == 3  # the tie goes to meaning
    further = lambda s, cands: [0.9, 0.1]  # noqa: E731
    assert best_by_facts(source, candidates[:2], further) == 1  # facts before meaning
    # no facts to keep: meaning decides; without it the first non-empty text
    assert best_by_facts("plain words.", ["", "a", "b"], lambda s, c: [0, 0.2, 0.5]) == 2
    assert best_by_facts("plain words.", ["  ", "a", "b"]) == 1
    with pytest.raises(ValueError, match="no candidates"):
        best_by_facts(source, [])
    with pytest.raises(ValueError, match="gave 1 scores for 2"):
        best_by_facts(source, ["a", "b"], lambda s, c: [0.5])


def test_sentence_initial_words_are_not_names():
    assert text_measures.extract_facts("However, the plan worked. Then it rained.")["names"] == set()
    assert text_measures.extract_facts("The LORD spoke to Balaam.")["names"] == {"LORD", "Balaam"}


def test_length_ratio():
    assert text_measures.length_ratio("one two three", "one two three four five six") == 0.5


@pytest.mark.parametrize("text,expected", [
    ("Sure! Here is the rewritten text: the river rose.", True),
    ("Here's a more natural version.\n\nThe river rose.", True),
    ("The river rose. I hope this helps!", True),
    ("<|im_start|>assistant\nThe river rose.", True),
    ("**Rewrite:** The river rose.", True),
    ("The river rose two metres overnight, and nobody was surprised.", False),
    ("Surely the river rose.", False),
])
def test_chat_artefacts(text, expected):
    assert text_measures.has_chat_artefact(text) is expected


def test_meaning_similarity_with_a_fake_embedder():
    vectors = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [3.0, 3.0]}
    embed = lambda texts: np.array([vectors[t] for t in texts])  # noqa: E731
    assert meaning_similarity(embed, ["a", "a", "c"], ["a", "b", "b"]) == pytest.approx(
        [1.0, 0.0, math.sqrt(0.5)])


@pytest.fixture(scope="module")
def embedder():
    from helpers.evaluate.embedding import Embedder
    return Embedder("sentence-transformers/all-MiniLM-L6-v2")


def test_minilm_similarity_of_identical_texts_is_one(embedder):
    texts = ["The bridge at Elm Street closed at 6 a.m.", "A cat sat on the mat."]
    sims = meaning_similarity(embedder, texts, list(texts))
    assert sims == pytest.approx([1.0, 1.0], abs=1e-5)
    related, unrelated = meaning_similarity(
        embedder, ["The Elm Street bridge was shut at six in the morning."] * 2, texts)
    assert related > unrelated + 0.2
