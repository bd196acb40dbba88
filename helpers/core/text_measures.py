"""What one text says, read off the text alone: every word, slop, loop, restatement and fact count.

- words: `tokens` (lower-cased words, the unit of every "per 1K tokens" rate) and `word_count`
  (white-space words, the unit of the data's length limits);
- slop: listed AI boilerplate phrases per 1K tokens;
- loops: a word n-gram that occurs twice (`repeated_ngram`, n = LOOP_N = 8);
- restated clauses: two clauses of one text that say the same thing in other words, which a
  decoding penalty on verbatim repeats leaves the 8-word measure blind to (`restated_clauses`:
  clauses split at .!?;:, commas and line breaks, each with at least RESTATE_MIN_WORDS content
  words, sharing at least RESTATE_OVERLAP of the smaller clause's);
- unfinished: a text that stops mid-sentence (`ends_mid_sentence`), cut short with or without
  reaching the token cap;
- facts: numbers, dates, URLs and capitalised names. `fact_preservation(source, output)` is the
  recall of the source's facts in the output; `invented_facts(source, output)` the output's facts
  that the source does not have (its precision's complement);
- what a rewrite should not be: empty, the draft itself, or wrapped in chat residue.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
_WORD = re.compile(r"\w+(?:'\w+)?")


def tokens(text: str) -> list[str]:
    """Word tokens, the unit of every 'per 1K tokens' rate in this project."""
    return _WORD.findall(text.lower())


def load_slop_phrases(path: str | Path | None = None) -> list[str]:
    path = Path(path) if path else REPO_DATA / "slop_phrases.txt"
    phrases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            phrases.append(line)
    return phrases


def slop_hits(text: str, phrases: list[str]) -> int:
    """Occurrences of the phrases, matched on whole words."""
    words = " " + " ".join(tokens(text)) + " "
    return sum(words.count(" " + " ".join(tokens(p)) + " ") for p in phrases)


def slop_rate(text: str, phrases: list[str]) -> float:
    """Slop phrases per 1,000 word tokens."""
    n = len(tokens(text))
    return 1000.0 * slop_hits(text, phrases) / n if n else 0.0

def word_count(text: str) -> int:
    """White-space words: the unit of min_words / max_words."""
    return len(text.split())


def slop_per_1k(texts: list[str], phrases: list[str]) -> list[float]:
    return [slop_rate(t, phrases) for t in texts]


# --- loops -----------------------------------------------------------------------------------------

# 8 words: natural prose seldom says the same 8 words twice in one paragraph (in the L2R dev data
# 9 of 421 human paragraphs, 2.1%, and 21 of 1,654 AI drafts, 1.3%, mostly code or a list; 6 words
# catch 7.4% and 4.0%), while a clause or sentence a small model repeats is longer than that
LOOP_N = 8


def repeated_ngram(text: str, n: int = LOOP_N) -> tuple[str, ...] | None:
    """The first word n-gram (lower-cased `tokens`) that occurs twice in `text`, or None."""
    words = tokens(text)
    seen = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            return gram
        seen.add(gram)
    return None


def loop_start(text: str, n: int = LOOP_N) -> int | None:
    """Where in `text` (a character index) the first repeated word n-gram begins its second
    occurrence, or None: the point at which a looping text starts saying it again."""
    spans = [(m.start(), m.group().lower()) for m in _WORD.finditer(text)]
    seen = set()
    for i in range(len(spans) - n + 1):
        gram = tuple(word for _, word in spans[i:i + n])
        if gram in seen:
            return spans[i][0]
        seen.add(gram)
    return None


def has_loop(text: str, n: int = LOOP_N) -> bool:
    return repeated_ngram(text, n) is not None


def mark_loop(text: str, n: int = LOOP_N) -> str:
    """`text` with each occurrence of its repeated n-gram in [[double brackets]], for reading."""
    gram = repeated_ngram(text, n)
    if gram is None:
        return text
    words = r"\W+".join(re.escape(w) for w in gram)
    return re.sub(rf"(?<!\w)({words})(?!\w)", r"[[\1]]", text, flags=re.IGNORECASE)


# --- facts ---------------------------------------------------------------------------------------

_MONTH = ("January|February|March|April|May|June|July|August|September|October|November|"
          "December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+")
_DATE = re.compile(
    rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}"
    rf"|(?:{_MONTH})\.? \d{{1,2}}(?:st|nd|rd|th)?(?:, \d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)? (?:{_MONTH})\.?(?: \d{{4}})?"
    rf"|(?:{_MONTH}) \d{{4}})\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
_NAME_RUN = re.compile(r"[A-Z][\w'’&-]*(?: (?:of |de |van |von )?[A-Z][\w'’&-]*)*")
# capitalised only because they start a sentence or are titles, not names
_NOT_NAMES = set("""a an the this that these those it its in on at of for to from by with and but or
nor so yet if as when while after before since during however although though because also then
there here he she they we you i his her their our your my mr mrs ms dr prof st what which who
where why how some many most all each every no not one two three first second next finally
meanwhile moreover furthermore overall today yes instead""".split())


_MONTH_NUMBER = {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DATE_PARTS = (  # (pattern, which groups hold year, month, day)
    (re.compile(r"(\d{4})-(\d{2})-(\d{2})"), (1, 2, 3)),
    (re.compile(rf"({_MONTH})\.? (\d{{1,2}})(?:st|nd|rd|th)?(?:, (\d{{4}}))?"), (3, 1, 2)),
    (re.compile(rf"(\d{{1,2}})(?:st|nd|rd|th)? ({_MONTH})\.?(?: (\d{{4}}))?"), (3, 2, 1)),
    (re.compile(rf"({_MONTH}) (\d{{4}})"), (2, 1, None)),
)


def _date_key(date: str) -> tuple | str:
    """(year, month, day), None where the text leaves one out, so that "3 May 2021",
    "May 3rd, 2021" and "2021-05-03" are one date. Slashed dates stay text: 3/5 is ambiguous."""
    for pattern, (y, m, d) in _DATE_PARTS:
        match = pattern.fullmatch(date)
        if match:
            month = match.group(m)
            month = int(month) if month.isdigit() else _MONTH_NUMBER[month[:3].lower()]
            year = match.group(y) if y else None
            day = match.group(d) if d else None
            return (int(year) if year else None, month, int(day) if day else None)
    return _norm(date)


def _dates(text: str) -> set:
    return {_date_key(d) for d in _DATE.findall(_URL.sub(" ", text))}


def _norm(text: str) -> str:
    return " ".join(text.replace(",", "").split()).lower()


def _numbers(text: str) -> set[str]:
    return {m.replace(",", "") for m in _NUMBER.findall(text)}


def _names(text: str) -> set[str]:
    names = set()
    for match in _NAME_RUN.finditer(text):
        words = match.group().split()
        while words and words[0].lower().strip("'’") in _NOT_NAMES:
            words = words[1:]
        before = text[:match.start()].rstrip()
        sentence_start = not before or before[-1] in ".!?:\"“\n"
        # one capitalised word that opens a sentence is not evidence of a name
        if words and not (sentence_start and len(words) == 1 and words[0] == match.group()):
            names.add(" ".join(words))
    return names


def extract_facts(text: str) -> dict[str, set[str]]:
    """URLs, dates, numbers and capitalised names in `text`. Each span is counted once: URLs and
    dates are cut out before numbers and names are read."""
    urls = {u.rstrip(".,;:!?") for u in _URL.findall(text)}
    rest = _URL.sub(" ", text)
    dates = set(_DATE.findall(rest))
    rest = _DATE.sub(" ", rest)
    return {"urls": urls, "dates": dates, "numbers": _numbers(rest), "names": _names(rest)}


def fact_survives(kind: str, fact: str, output: str) -> bool:
    if kind == "numbers":
        return fact in _numbers(output)
    if kind == "names":
        return re.search(rf"(?<!\w){re.escape(fact)}(?!\w)", output) is not None
    if kind == "dates":
        return _date_key(fact) in _dates(output)
    return _norm(fact) in _norm(output)


def fact_preservation(source: str, output: str) -> float:
    """Share of the source's facts found in the output; NaN when the source has none."""
    facts = [(kind, f) for kind, found in extract_facts(source).items() for f in found]
    if not facts:
        return float("nan")
    return sum(fact_survives(kind, f, output) for kind, f in facts) / len(facts)


def missing_facts(source: str, output: str) -> list[tuple[str, str]]:
    """The source's facts that the output lost or changed, as (kind, fact), for showing."""
    return [(kind, fact) for kind, found in extract_facts(source).items() for fact in sorted(found)
            if not fact_survives(kind, fact, output)]

def invented_facts(source: str, output: str) -> list[tuple[str, str]]:
    """The output's facts that the source does not have, as (kind, fact): `missing_facts` read
    the other way round. An invented number, date or name is a claim no draft supports."""
    return missing_facts(output, source)


# --- restated clauses -----------------------------------------------------------------------------

# A clause ends at sentence punctuation (.!?;:) or a comma followed by white space or the text's
# end (so 3.5 and 1,000 stay whole), or at a line break. Simple on purpose: a clause cut too short
# by an abbreviation has few content words, and below RESTATE_MIN_WORDS it never counts.
_CLAUSE_END = re.compile(r"[.!?;:,](?=\s|$)|\n")
# words that carry no content of their own: two clauses sharing only these say nothing twice
_FUNCTION_WORDS = _NOT_NAMES | set("""is are was were be been being am do does did done have has
had having will would shall should can could may might must not than too very just more less much
into onto about over under up down out off again once both few any such only own same other
another nor its it's that's there's which whose whom who's upon via like unlike within without
between through across along among around against toward towards""".split())


def content_words(clause: str) -> set[str]:
    """A clause's distinct `tokens` of 3 or more letters, function words left out."""
    return {w for w in tokens(clause) if len(w) >= 3 and w not in _FUNCTION_WORDS}


def clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE_END.split(text) if c.strip()]


# Calibrated as LOOP_N was, by experiments/calibrate_restatement.py: with 5 content words and 70%
# of the smaller clause's shared, 12 of 421 L2R dev human paragraphs (2.9%) and 37 of 1,654 AI
# drafts (2.2%) are flagged, mostly legal citations, code and parallel clauses ("the ask prices
# represent people trying to sell shares, and the bid prices ... to buy shares"). 60% flags 9.5%
# and 7.5%; 4 words 8.1% and 5.3%. The DRY rewrite "This high-energy dance sport combines urban
# and hip hop culture ..., which is a high-energy dance that combines ... urban and hip hop ..."
# shares 8 of its clauses' 11 and 12 (73%): 80% would miss it
RESTATE_MIN_WORDS = 5
RESTATE_OVERLAP = 0.7


def restated_clauses(text: str, k: int = RESTATE_MIN_WORDS,
                     t: float = RESTATE_OVERLAP) -> tuple[str, str] | None:
    """The first pair of clauses of `text` that say the same thing in other words, or None: both
    have at least `k` content words and share at least `t` of the smaller clause's."""
    seen: list[tuple[str, set[str]]] = []
    for clause in clauses(text):
        words = content_words(clause)
        if len(words) < k:
            continue
        for earlier, earlier_words in seen:
            if len(words & earlier_words) >= t * min(len(words), len(earlier_words)):
                return earlier, clause
        seen.append((clause, words))
    return None


def has_restatement(text: str, k: int = RESTATE_MIN_WORDS, t: float = RESTATE_OVERLAP) -> bool:
    return restated_clauses(text, k, t) is not None


# --- unfinished endings ---------------------------------------------------------------------------

# By experiments/calibrate_restatement.py, 36 of 1,654 L2R dev AI drafts (2.2%) end without one of
# these: a URL, code without a fence, a sign-off (XOXO), a citation the data cuts. Human paragraphs
# are no baseline here: 107 of 421 (25.4%), as the data keeps many without their last full stop
# or cut mid-citation (all 15 Code, 17 of 17 Environmental, 16 of 17 LegalDocument); the draft is
# the reference a rewrite is compared with
_SENTENCE_END = ".!?…"
# what may follow the full stop: a closing quote, bracket or emphasis, and emoji (symbols, with
# their variation selectors and joiners)
_CLOSERS = "\"'”’»)]}*_"
_LIST_ITEM = re.compile(r"\s*(?:[-*•+]|\d+[.)])\s+\S")
_CODE_FENCE = "```"


def _without_closers(text: str) -> str:
    while text and (text[-1] in _CLOSERS or text[-1].isspace()
                    or unicodedata.category(text[-1]) in ("So", "Mn", "Cf")):
        text = text[:-1]
    return text


def ends_mid_sentence(text: str) -> bool:
    """True when `text` stops where a sentence cannot end: its last character, read past closing
    quotes, brackets, emphasis and emoji, is not . ! ? or …. Finished as well: a text that ends
    with a code fence (```), and a last line that is a list item ("- ", "1. ") not ending in
    , ; or : (items often go without a full stop). A text that stops inside an open code block is
    unfinished. Empty text is not: `is_empty` counts it."""
    text = text.rstrip()
    if not text:
        return False
    if text.endswith(_CODE_FENCE):
        return False
    if text.count(_CODE_FENCE) % 2:
        return True
    last_line = text.rsplit("\n", 1)[-1]
    if _LIST_ITEM.match(last_line):
        return last_line[-1] in ",;:"
    return _without_closers(text)[-1:] not in _SENTENCE_END


def repeat_and_ending_flags(texts: list[str]) -> dict[str, list[float]]:
    """Per text, 1.0 or 0.0: `loops` (a repeated LOOP_N-word sequence), `restated` (a clause said
    again in other words) and `unfinished` (stops mid-sentence), the flags every evaluation table
    reads beside its scores."""
    return {"loops": [float(has_loop(t)) for t in texts],
            "restated": [float(has_restatement(t)) for t in texts],
            "unfinished": [float(ends_mid_sentence(t)) for t in texts]}


# --- what a rewrite should not be ----------------------------------------------------------------


def length_ratio(output: str, source: str) -> float:
    n = len(tokens(source))
    return len(tokens(output)) / n if n else float("nan")


def is_empty(text: str) -> bool:
    return not text.strip()


def is_identical(output: str, source: str) -> bool:
    """The rewrite is the draft itself, white space aside: nothing was rewritten."""
    return output.split() == source.split()


_ARTEFACTS = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (
    r"\A\W*(?:sure|certainly|of course|absolutely|okay)\b",   # "Sure! Here is ..."
    r"\A\W*here(?:'s| is| are)\b",
    r"\b(?:rewritten|revised|humani[sz]ed) (?:text|version|paragraph)\b",
    r"\bas an ai\b|\blanguage model\b",
    r"\bi hope this helps\b|\blet me know\b|\bfeel free to\b",
    r"<\|[\w-]+\|>|</?s>|^(?:assistant|user|system)\s*:",    # leaked chat-template tokens
    r"^#+ |\*\*",                                          # markdown headings / bold
)]


def has_chat_artefact(text: str) -> bool:
    """True when the text carries chat-assistant residue rather than just the rewrite."""
    return any(p.search(text) for p in _ARTEFACTS)
