from helpers.core import text_measures as tm

LOOPED = ("This high-energy dance sport combines urban and hip hop culture with physical acrobatic "
          "feats, which is a high-energy dance sport that combines the rhythmic flair of urban and "
          "hip hop culture with physical acrobatic feats.")


def test_a_repeated_8_word_sequence_is_a_loop_and_7_words_are_not():
    seven = "one two three four five six seven"
    assert tm.repeated_ngram(f"{seven} eight. Then {seven} nine.") is None  # 7 words repeated
    assert tm.repeated_ngram(f"{seven} eight. Then {seven} eight.") == tuple(
        f"{seven} eight".split())
    assert tm.repeated_ngram(LOOPED) == tuple(
        "urban and hip hop culture with physical acrobatic".split())
    assert not tm.has_loop("A short text with no repeats at all, of any length worth naming.")
    assert tm.has_loop("Again And again and again and again and again and again and.")  # case


def test_mark_loop_brackets_each_occurrence():
    marked = tm.mark_loop(LOOPED)
    assert marked.count("[[urban and hip hop culture with physical acrobatic]]") == 2
    assert tm.mark_loop("No loop here.") == "No loop here."


def test_invented_facts_are_the_outputs_facts_the_draft_lacks():
    draft = "The rule (43 C.F.R. § 30.150) took effect on 3 May 2021 in Denver."
    output = "The rule (43 C.F.R. § 10-257) took effect on May 3rd, 2021 in Denver, said Ann Lee."
    assert tm.invented_facts(draft, output) == [("numbers", "10"), ("numbers", "257"),
                                                ("names", "Ann Lee")]
    assert tm.invented_facts(draft, draft) == []
    assert tm.missing_facts(draft, output) == [("numbers", "30.150")]  # the other direction


def test_empty_and_identical():
    assert tm.is_empty(" \n ") and not tm.is_empty(" a ")
    assert tm.is_identical("One  draft.\n", "One draft.")
    assert not tm.is_identical("One draft!", "One draft.")


RESTATED = ("This high-energy dance sport combines urban and hip hop culture with physical "
            "acrobatic feats, which is a high-energy dance that combines the rhythmic flair of "
            "urban and hip hop with physical athleticism.")


def test_a_clause_said_again_in_other_words_is_a_restatement_the_loop_measure_misses():
    assert not tm.has_loop(RESTATED)
    assert tm.restated_clauses(RESTATED) == (
        "This high-energy dance sport combines urban and hip hop culture with physical acrobatic "
        "feats",
        "which is a high-energy dance that combines the rhythmic flair of urban and hip hop with "
        "physical athleticism")
    assert tm.has_restatement(LOOPED)  # a verbatim repeat of a long clause is one too


def test_a_name_repeated_across_sentences_is_not_a_restatement():
    paragraph = ("Marie Curie moved to Paris in 1891 to study physics at the Sorbonne. Marie Curie "
                 "later shared the Nobel Prize with Pierre Curie for their work on radioactivity. "
                 "Pierre Curie died in a street accident in Paris in 1906.")
    assert tm.restated_clauses(paragraph) is None


def test_clauses_below_the_minimum_of_content_words_never_count():
    short = "Prices rose sharply, prices rose sharply again."  # 3 content words each
    assert tm.content_words("prices rose sharply again") == {"prices", "rose", "sharply"}
    assert not tm.has_restatement(short)
    assert tm.has_restatement(short, k=3)


def test_an_ending_without_sentence_punctuation_is_unfinished():
    assert not tm.ends_mid_sentence("It works.")
    assert tm.ends_mid_sentence("It works")
    assert not tm.ends_mid_sentence('He said "yes."')
    assert not tm.ends_mid_sentence("")  # empty is counted by is_empty
    assert tm.ends_mid_sentence("The results are shown in")
    assert tm.ends_mid_sentence("It works, and then,")
    assert not tm.ends_mid_sentence("See you then! 😊")


def test_a_closed_code_block_or_a_list_item_is_finished_an_open_code_block_is_not():
    assert not tm.ends_mid_sentence("Run it:\n```python\nprint(1)\n```")
    assert tm.ends_mid_sentence("Run it:\n```python\nprint(1)")
    assert not tm.ends_mid_sentence("You need:\n- flour\n- two eggs")
    assert not tm.ends_mid_sentence("Steps:\n1. Mix\n2. Bake")
    assert tm.ends_mid_sentence("You need:\n- flour,")
