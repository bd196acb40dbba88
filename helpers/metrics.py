"""What a rewrite keeps and what it changes, with honest uncertainty.

Per text: slop phrases per 1K tokens, meaning similarity to the source (MiniLM cosine), the share
of the source's facts (numbers, URLs, dates, names) that survive, length ratio, chat artefacts.
Over a sample: bootstrap 95% CIs for every mean, AUROC, a threshold at a fixed false-positive rate,
and "gap closed" (how far a system moved P(AI) from the AI draft towards human text).
"""
from __future__ import annotations

import re

import numpy as np

from .data import slop_rate, tokens

# --- uncertainty ---------------------------------------------------------------------------------


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean and percentile-bootstrap CI of `values`; NaNs (e.g. texts without facts) left out."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(x))}


def paired_bootstrap_ci(statistic, *arrays, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """CI of `statistic(*arrays)` when the arrays describe the same items (resampled together)."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    stats = [statistic(*(a[idx] for a in arrays))
             for idx in rng.integers(0, n, (n_boot, n))]
    stats = np.asarray([s for s in stats if s is not None and np.isfinite(s)])
    point = statistic(*arrays)
    if point is None or not np.isfinite(point) or len(stats) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": n}
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi), "n": n}


# --- detector quality ----------------------------------------------------------------------------


def auroc(negative_scores, positive_scores) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney)."""
    neg = np.asarray(negative_scores, dtype=float)[None, :]
    pos = np.asarray(positive_scores, dtype=float)[:, None]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def threshold_at_fpr(human_scores, fpr: float = 0.05) -> float:
    """The score a text must EXCEED to be flagged as AI so that at most `fpr` of human texts are:
    the (k+1)-th highest human score with k = floor(fpr * n)."""
    scores = np.sort(np.asarray(human_scores, dtype=float))[::-1]
    return float(scores[min(int(np.floor(fpr * len(scores))), len(scores) - 1)])


def gap_closed(p_source, p_system, p_human) -> float | None:
    """(P_source - P_system) / (P_source - P_human) on mean P(AI): 0 = no change, 1 = as human."""
    source, system, human = np.nanmean(p_source), np.nanmean(p_system), np.nanmean(p_human)
    if not abs(source - human) > 1e-9:  # no gap to close (or nothing scored)
        return None
    return float((source - system) / (source - human))


# --- per-text measures ---------------------------------------------------------------------------


def slop_per_1k(texts: list[str], phrases: list[str]) -> list[float]:
    return [slop_rate(t, phrases) for t in texts]


def length_ratio(output: str, source: str) -> float:
    n = len(tokens(source))
    return len(tokens(output)) / n if n else float("nan")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def meaning_similarity(embedder, outputs: list[str], sources: list[str]) -> np.ndarray:
    """MiniLM cosine(output, source) per pair."""
    return cosine_rows(embedder(outputs), embedder(sources))


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


def best_by_facts(source: str, candidates: list[str], meaning_fn=None) -> int:
    """Index of the candidate rewrite of `source` to keep (verify and resample): the one keeping
    the most facts; ties go to the closest in meaning (`meaning_fn(source, candidates)` gives one
    similarity per candidate), then to the earliest. An empty text loses to any other."""
    if not candidates:
        raise ValueError("best_by_facts: no candidates to choose from")
    kept = [fact_preservation(source, c) for c in candidates]
    kept = [0.0 if k != k else k for k in kept]  # NaN: the source has no facts, all tie
    meaning = list(meaning_fn(source, candidates)) if meaning_fn else [0.0] * len(candidates)
    if len(meaning) != len(candidates):
        raise ValueError(f"best_by_facts: meaning_fn gave {len(meaning)} scores for "
                         f"{len(candidates)} candidates")
    keys = [(bool(c.strip()), k, float(m)) for c, k, m in zip(candidates, kept, meaning)]
    return max(range(len(candidates)), key=keys.__getitem__)  # max keeps the first of ties


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
