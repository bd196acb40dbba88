"""Put a draft's lost facts back into its rewrite, sentence by sentence (the fact switch's last step).

Resampling a whole paragraph (generate.verify_and_resample) often loses a different fact each
time. Here each draft sentence that holds a fact the rewrite lacks is rewritten alone (a short
input, which a small model copies more faithfully), and the first candidate keeping all of that
sentence's facts is spliced into the rewrite; when none does, the draft sentence itself goes in:

    for each draft sentence s_j holding a lost fact:
        r_j = first of rewrite_sentences(s_j) keeping every fact of s_j, else s_j
        put r_j in place of the rewrite's sentence most like s_j (word overlap),
        or beside it when replacing would lose a fact that sentence carried

Inserting never loses a fact, so the result keeps at least as many of the draft's facts as the
rewrite did, and every lost fact that sits inside one draft sentence comes back. What it costs is
measured, not assumed: copied draft sentences read like the draft to a detector.
"""
from __future__ import annotations

import re
from typing import Callable

from helpers.core.text_measures import fact_preservation, fact_survives, missing_facts
from helpers.infer.chunking import SENTENCE_END

WORD = re.compile(r"\w+")


def sentences(text: str) -> list[str]:
    """The text's sentences, cut after . ! ? (and closing quotes) before whitespace."""
    cuts, start = [], 0
    for m in SENTENCE_END.finditer(text):
        cuts.append(text[start:m.start(1)])
        start = m.end(1)
    cuts.append(text[start:])
    return [s.strip() for s in cuts if s.strip()]


def word_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' lowercase word sets (0 when either has none)."""
    x, y = set(WORD.findall(a.lower())), set(WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x and y else 0.0


def keeps_all_facts(source: str, candidate: str) -> bool:
    """True when `candidate` keeps every fact of `source` (a source without facts: True)."""
    kept = fact_preservation(source, candidate)
    return kept != kept or kept == 1.0  # NaN: nothing to keep


def sentences_with_lost_facts(source: str, output: str) -> list[int]:
    """Indices of the source's sentences holding a fact that `output` lacks."""
    lost = missing_facts(source, output)
    return [j for j, s in enumerate(sentences(source))
            if any(fact_survives(kind, fact, s) for kind, fact in lost)]


def best_place(sentence: str, position: float, output_sentences: list[str]) -> int:
    """The output sentence most like `sentence`; ties go to the one nearest its relative position."""
    n = len(output_sentences)
    return max(range(n), key=lambda i: (word_overlap(sentence, output_sentences[i]),
                                        -abs((i + 0.5) / n - position)))


def splice(source: str, output: str, pieces: dict[int, str]) -> str:
    """`output` with pieces[j] (the repair of source sentence j) put in, each in place of the output
    sentence most like source sentence j, or after it when replacing keeps fewer facts."""
    src, out = sentences(source), sentences(output)
    if not out:
        return " ".join(pieces[j] for j in sorted(pieces))
    for j in sorted(pieces):
        i = best_place(src[j], (j + 0.5) / len(src), out)
        replaced = out[:i] + [pieces[j]] + out[i + 1:]
        inserted = out[:i + 1] + [pieces[j]] + out[i + 1:]
        out = replaced if fact_preservation(source, " ".join(replaced)) >= \
            fact_preservation(source, " ".join(inserted)) else inserted
    return " ".join(out)


def sentence_candidates(texts: list[str], n: int, plain: Callable[[list[str]], list[str]],
                        sample: Callable[[list[str]], list[str]]) -> list[list[str]]:
    """Candidate rewrites for each sentence to repair: its plain rewrite first, then n samples,
    drawn only for the sentences whose plain rewrite loses one of their facts (for the others the
    plain rewrite is the one kept, so samples would be decoded for nothing)."""
    candidates = [[c] for c in plain(texts)]
    failing = [i for i, (t, c) in enumerate(zip(texts, candidates)) if not keeps_all_facts(t, c[0])]
    more = sample([texts[i] for i in failing for _ in range(n)]) if failing and n > 0 else []
    for k, i in enumerate(failing):
        candidates[i] += more[k * n:(k + 1) * n]
    return candidates


def repair_facts(sources: list[str], outputs: list[str],
                 rewrite_sentences: Callable[[list[str]], list[list[str]]]) -> list[str]:
    """Every output with its source's lost facts put back (see the module's docstring).
    `rewrite_sentences(texts)` gives candidate rewrites for each text, all texts at once."""
    todo = [(k, j) for k, (s, o) in enumerate(zip(sources, outputs))
            for j in sentences_with_lost_facts(s, o)]
    if not todo:
        return list(outputs)
    texts = [sentences(sources[k])[j] for k, j in todo]
    candidates = rewrite_sentences(texts)
    pieces: dict[int, dict[int, str]] = {}
    for (k, j), text, options in zip(todo, texts, candidates):
        keeping = [c for c in options if c.strip() and keeps_all_facts(text, c)]
        pieces.setdefault(k, {})[j] = keeping[0] if keeping else text
    return [splice(sources[k], o, pieces[k]) if k in pieces else o for k, o in enumerate(outputs)]

