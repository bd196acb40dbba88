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
