import pytest

from helpers.infer.chunking import Piece, join_pieces, split_document


def words(text):
    return len(text.split())


def identity(pieces):
    return join_pieces(pieces, [p.text for p in pieces if p.rewrite])


MARKDOWN = """---
title: A note
---

# The river

The river rose two metres overnight. The bridge closed at 6 a.m.

- sandbags at Elm Street
- the school shut

  (until Monday)

Setext heading
--------------

```python
level = 2.0

print(level)
```

| day | level |
|-----|-------|
| Mon | 2.0   |

> "We have never seen it this high," said the mayor.

[source]: https://example.org/river

***

Water fell again by the evening.
"""


def test_markdown_structure_passes_through_and_prose_is_rewritten():
    pieces = split_document(MARKDOWN, words, max_tokens=100)
    assert [(p.text.split("\n")[0], p.rewrite) for p in pieces] == [
        ("---", False),
        ("# The river", False),
        ("The river rose two metres overnight. The bridge closed at 6 a.m.", True),
        ("- sandbags at Elm Street", False),
        ("Setext heading", False),
        ("```python", False),
        ("| day | level |", False),
        ('> "We have never seen it this high," said the mayor.', False),
        ("[source]: https://example.org/river", False),
        ("***", False),
        ("Water fell again by the evening.", True),
    ]
    assert pieces[3].text == "- sandbags at Elm Street\n- the school shut\n\n  (until Monday)"
    assert pieces[5].text == "```python\nlevel = 2.0\n\nprint(level)\n```"
    assert [p.separator for p in pieces] == ["\n\n"] * 10 + ["\n"]
    assert identity(pieces) == MARKDOWN
    assert join_pieces(pieces, ["RIVER.", "FELL."]) == MARKDOWN.replace(
        pieces[2].text, "RIVER.").replace(pieces[10].text, "FELL.")


@pytest.mark.parametrize("text", [
    "", "   \n\n", "one line", "\n\nleading blank lines\n\n\nand three\n", "a\r\n\r\nb\r\n",
    "```\nnever closed\n\nstill code", "> quote\nlazy line\n\npara", "1. one\n2) two\n\nafter",
    "tabs\tand  double  spaces. Next one!  \n", MARKDOWN,
])
@pytest.mark.parametrize("max_tokens", [1, 3, 100])
def test_joining_the_unchanged_pieces_gives_the_document_back(text, max_tokens):
    assert identity(split_document(text, words, max_tokens)) == text


def test_a_long_paragraph_is_cut_between_sentences():
    text = "One two three. Four five! Six seven eight nine? Ten.\n\nShort one."
    pieces = split_document(text, words, max_tokens=5)
    assert pieces == [Piece("One two three. Four five!", True, " "),
                      Piece("Six seven eight nine? Ten.", True, "\n\n"),
                      Piece("Short one.", True, "")]


def test_quotes_after_the_full_stop_stay_with_the_sentence():
    pieces = split_document('He said "stop." Then he left. Fine.', words, max_tokens=3)
    assert [p.text for p in pieces] == ['He said "stop."', "Then he left.", "Fine."]


def test_a_sentence_longer_than_the_limit_is_cut_between_words():
    text = "a b c d e f g. Next."
    pieces = split_document(text, words, max_tokens=3)
    assert pieces == [Piece("a b c", True, " "), Piece("d e f", True, " "),
                      Piece("g.", True, " "), Piece("Next.", True, "")]


def test_a_word_longer_than_the_limit_passes_through():
    url = "https://example.org/" + "x" * 50
    characters = len  # one token per character
    pieces = split_document(f"see {url} now", characters, max_tokens=10)
    assert pieces == [Piece("see", True, " "), Piece(url, False, " "), Piece("now", True, "")]


def test_the_groups_own_token_count_decides_not_the_sum_of_its_parts():
    # with one token per character the join adds the space: 3 + 3 = 6 fits, "aaa bbb" (7) does not
    pieces = split_document("aaa bbb", len, max_tokens=6)
    assert pieces == [Piece("aaa", True, " "), Piece("bbb", True, "")]
    assert split_document("aaa bbb", len, max_tokens=7) == [Piece("aaa bbb", True, "")]


def test_every_piece_to_rewrite_fits_the_limit():
    text = "\n\n".join(" ".join(f"w{i}{j}." if j % 4 == 3 else f"w{i}{j}" for j in range(40))
                       for i in range(5))
    pieces = split_document(text, words, max_tokens=7)
    assert all(words(p.text) <= 7 for p in pieces if p.rewrite)
    assert identity(pieces) == text


def test_join_rejects_the_wrong_number_of_rewrites_and_drops_empty_ones():
    pieces = split_document("A.\n\nB.\n\nC.\n", words, max_tokens=10)
    with pytest.raises(ValueError, match="2 rewrites for 3 pieces"):
        join_pieces(pieces, ["x", "y"])
    assert join_pieces(pieces, ["x", "  ", "z"]) == "x\n\nz\n"
    assert join_pieces(pieces, [" x\n", "y", ""]) == "x\n\ny\n\n\n"  # the last keeps its ending


def test_max_tokens_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        split_document("text", words, 0)


def test_short_pieces_beside_a_long_one_are_kept_as_they_are():
    text = "**A title**\n\nOne two three four five six.\n\n\"Why?\" he asked."
    pieces = split_document(text, words, max_tokens=10, min_words=4)
    assert pieces == [Piece("**A title**", False, "\n\n"),
                      Piece("One two three four five six.", True, "\n\n"),
                      Piece('"Why?" he asked.', False, "")]
    assert identity(pieces) == text


def test_a_document_of_short_pieces_alone_is_rewritten():
    text = "Roses are red.\n\nViolets are blue."
    assert [p.rewrite for p in split_document(text, words, 10, min_words=4)] == [True, True]
    assert [p.rewrite for p in split_document(text, words, 10, min_words=0)] == [True, True]
    mixed = "Roses red.\n\nViolets are blue."  # now one piece is long enough: the short one stays
    assert [p.rewrite for p in split_document(mixed, words, 10, min_words=3)] == [False, True]
