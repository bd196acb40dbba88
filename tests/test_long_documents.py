"""experiments/long_documents.py's kept words and compare_long_documents.py's paired verdicts."""
import sys

from helpers.core.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))  # the scripts import each other, as run there
import compare_long_documents  # noqa: E402
import long_documents  # noqa: E402


def words(text):
    return len(text.split())


def test_kept_words_counts_what_passes_through_unchanged():
    draft = "**A title**\n\n" + " ".join(["word"] * 30)
    assert long_documents.kept_words(words, 100, draft, min_piece_words=30) == 2 / 32
    assert long_documents.kept_words(words, 100, draft, min_piece_words=0) == 0.0


def test_the_difference_is_paired_and_leaves_out_documents_without_a_value():
    assert compare_long_documents.mean_difference([1, 0, float("nan")], [0, 0, 1]) == 0.5
    assert compare_long_documents.mean_difference([float("nan")], [1]) is None


def test_a_verdict_needs_a_ci_that_excludes_zero():
    verdict = compare_long_documents.verdict
    assert verdict({"mean": -0.2, "lo": -0.3, "hi": -0.1}, False) == "better"
    assert verdict({"mean": -0.2, "lo": -0.3, "hi": 0.0}, False) == "not shown"
    assert verdict({"mean": 0.2, "lo": 0.1, "hi": 0.3}, False) == "worse"
    assert verdict({"mean": 0.2, "lo": 0.1, "hi": 0.3}, True) == "better"
    assert verdict({"mean": 0.2, "lo": 0.1, "hi": 0.3}, None) == "—"


def test_paragraphs_are_binned_by_their_source_length_and_counted_when_cut():
    import piece_lengths
    pairs = [("short title", "A made-up sentence that runs on and"),
             (" ".join(["w"] * 31), "A whole sentence."), (" ".join(["w"] * 31), "Cut off at")]
    rows = {r["words"]: (r["paragraphs"], r["cut"]) for r in piece_lengths.by_length(pairs)}
    assert rows == {"0-14": (1, 1), "15-19": (0, 0), "20-29": (0, 0), "30-44": (2, 1),
                    "45-59": (0, 0), "60+": (0, 0)}
