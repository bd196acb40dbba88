"""What one text says, read off the text alone: every word, slop, loop and fact count.

- words: `tokens` (lower-cased words, the unit of every "per 1K tokens" rate) and `word_count`
  (white-space words, the unit of the data's length limits);
- slop: listed AI boilerplate phrases per 1K tokens;
- loops: a word n-gram that occurs twice (`repeated_ngram`, n = LOOP_N = 8);
- facts: numbers, dates, URLs and capitalised names. `fact_preservation(source, output)` is the
  recall of the source's facts in the output; `invented_facts(source, output)` the output's facts
  that the source does not have (its precision's complement);
- what a rewrite should not be: empty, the draft itself, or wrapped in chat residue.
"""
from __future__ import annotations

import re
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
