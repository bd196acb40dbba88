"""Cut a long document into pieces a rewrite call can take, and put the rewrites back in order.

The adapters were trained on single paragraphs, and one rewrite call takes at most `max_tokens`
tokens, so a document is cut at its blank lines. Markdown that is not prose passes through
unchanged: headings, fenced code blocks, lists, tables, block quotes, link definitions, rules and
YAML front matter. A paragraph longer than `max_tokens` is cut between sentences (a sentence
longer than that between words; one "word" longer than that, such as a long URL, passes through).
Beside longer prose, pieces shorter than a given number of words (titles, one-line dialogue) pass
through too.

Every piece keeps the whitespace that followed it in the document (`separator`), so that
    join_pieces(pieces, [p.text for p in pieces if p.rewrite]) == text
for any text. Indented code blocks are not recognised (in plain .txt files an indented line is
usually prose); fence code to keep it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")
TABLE_DELIMITER = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
QUOTE = re.compile(r"^ {0,3}>")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*\S")
INDENTED = re.compile(r"^(?: {2,}|\t)\S")
# a sentence ends at . ! ? … 。 (and any closing quotes or brackets), before whitespace
SENTENCE_END = re.compile(r"(?<=[.!?…。])[\"'”’)\]]*(\s+)")
WORDS = re.compile(r"(\s+)")


@dataclass(frozen=True)
class Piece:
    text: str
    rewrite: bool  # False: passed through unchanged
    separator: str = ""  # the whitespace that followed it in the document


def _is_blank(line: str) -> bool:
    return not line.strip()


def _interrupts_prose(line: str) -> bool:
    """Lines that start a new block even without a blank line before them."""
    return bool(FENCE.match(line) or HEADING.match(line) or RULE.match(line)
                or LIST_ITEM.match(line) or QUOTE.match(line))


def _fence_end(lines: list[str], start: int) -> int:
    """The line after the fence opened at `start` closes (the document's end if never)."""
    fence = FENCE.match(lines[start]).group(1)
    closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    for i in range(start + 1, len(lines)):
        if closing.match(lines[i]):
            return i + 1
    return len(lines)


def _list_end(lines: list[str], start: int) -> int:
    """A list runs on over blank lines while what follows is another item or indented."""
    i = start + 1
    while i < len(lines):
        if _is_blank(lines[i]):
            j = i
            while j < len(lines) and _is_blank(lines[j]):
                j += 1
            if j < len(lines) and (LIST_ITEM.match(lines[j]) or INDENTED.match(lines[j])):
                i = j
                continue
            return i
        if FENCE.match(lines[i]) or HEADING.match(lines[i]) or RULE.match(lines[i]):
            return i
        i += 1
    return i


def _block_end(lines: list[str], start: int, first: bool) -> tuple[int, bool]:
    """(end line, is prose) of the block starting at line `start` (not blank); `lines` are
    without their line endings."""
    line = lines[start]
    if first and line == "---":  # YAML front matter
        for i in range(1, len(lines)):
            if lines[i] in ("---", "..."):
                return i + 1, False
    if FENCE.match(line):
        return _fence_end(lines, start), False
    if HEADING.match(line) or RULE.match(line):
        return start + 1, False
    if LIST_ITEM.match(line):
        return _list_end(lines, start), False
    end = start + 1
    if QUOTE.match(line):  # a quote is someone's words: rewriting it would misquote them
        while end < len(lines) and not _is_blank(lines[end]):
            end += 1
        return end, False
    while end < len(lines) and not _is_blank(lines[end]):
        if SETEXT_UNDERLINE.match(lines[end]):
            return end + 1, False  # the lines above it are a heading
        if _interrupts_prose(lines[end]):
            break
        end += 1
    block = lines[start:end]
    is_table = len(block) >= 2 and "|" in block[0] and TABLE_DELIMITER.match(block[1])
    is_links = all(LINK_DEFINITION.match(b) for b in block)
    return end, not (is_table or is_links)


def _blocks(text: str) -> tuple[str, list[tuple[str, bool, str]]]:
    """(leading whitespace, [(block text, is prose, whitespace after it)])."""
    lines = text.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    blocks, i = [], 0
    while i < len(lines) and _is_blank(lines[i]):
        i += 1
    leading = "".join(lines[:i])
    while i < len(lines):
        end, prose = _block_end(bare, i, first=not blocks)
        nxt = end
        while nxt < len(lines) and _is_blank(lines[nxt]):
            nxt += 1
        body = "".join(lines[i:end])
        stripped = body.rstrip()
        blocks.append((stripped, prose, body[len(stripped):] + "".join(lines[end:nxt])))
        i = nxt
    return leading, blocks


def _units(text: str, boundary: re.Pattern) -> list[tuple[str, str]]:
    """[(unit, whitespace after it)], cut where `boundary`'s first group (whitespace) matches."""
    units, start = [], 0
    for m in boundary.finditer(text):
        units.append((text[start:m.start(1)], m.group(1)))
        start = m.end(1)
    units.append((text[start:], ""))
    return units


def _pack(units: list[tuple[str, str]], count_tokens: Callable[[str], int],
          max_tokens: int) -> list[tuple[str, str]]:
    """Consecutive units joined greedily into groups of at most max_tokens tokens (a unit over
    the limit stays alone). The sum of the units' counts is the estimate; the group's own count
    decides, since tokenizing a join can differ from the sum."""
    counts = [count_tokens(u) for u, _ in units]
    groups, i = [], 0
    while i < len(units):
        j, total = i + 1, counts[i]
        while j < len(units) and total + counts[j] <= max_tokens:
            total += counts[j]
            j += 1
        while j - i > 1 and count_tokens(_joined(units[i:j])) > max_tokens:
            j -= 1
        groups.append((_joined(units[i:j]), units[j - 1][1]))
        i = j
    return groups


def _joined(units: list[tuple[str, str]]) -> str:
    return "".join(u + sep for u, sep in units[:-1]) + units[-1][0]


def _split_prose(text: str, separator: str, count_tokens, max_tokens) -> list[Piece]:
    if count_tokens(text) <= max_tokens:
        return [Piece(text, True, separator)]
    pieces = []
    for sentences, sep in _pack(_units(text, SENTENCE_END), count_tokens, max_tokens):
        if count_tokens(sentences) <= max_tokens:
            pieces.append(Piece(sentences, True, sep))
            continue
        for words, word_sep in _pack(_units(sentences, WORDS), count_tokens, max_tokens):
            fits = count_tokens(words) <= max_tokens
            pieces.append(Piece(words, fits, word_sep))
        pieces[-1] = Piece(pieces[-1].text, pieces[-1].rewrite, sep)
    pieces[-1] = Piece(pieces[-1].text, pieces[-1].rewrite, separator)
    return pieces


def split_document(text: str, count_tokens: Callable[[str], int], max_tokens: int,
                   min_words: int = 0) -> list[Piece]:
    """The document as pieces: prose to rewrite (each at most max_tokens tokens) and markdown
    structure to keep, in order, each with the whitespace that followed it. Beside a prose piece
    of at least `min_words` words, shorter ones are kept as they are too: a title, a caption or
    a line of dialogue gives a model trained on whole paragraphs too little to rewrite, and it
    writes on about something else until the token cap. A document of short pieces alone (one
    sentence, a poem) is rewritten as it is: that is what was asked for."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    leading, blocks = _blocks(text)
    pieces = [Piece("", False, leading)] if leading else []
    for body, prose, separator in blocks:
        if prose:
            pieces += _split_prose(body, separator, count_tokens, max_tokens)
        else:
            pieces.append(Piece(body, False, separator))
    short = [p.rewrite and len(p.text.split()) < min_words for p in pieces]
    if not any(p.rewrite and not s for p, s in zip(pieces, short)):
        return pieces
    return [Piece(p.text, False, p.separator) if s else p for p, s in zip(pieces, short)]


def join_pieces(pieces: list[Piece], rewrites: Iterable[str]) -> str:
    """The document again, with the pieces to rewrite replaced, in order, by `rewrites`. A rewrite
    that came back empty is left out with the whitespace after it (no run of blank lines)."""
    rewrites = list(rewrites)
    wanted = sum(p.rewrite for p in pieces)
    if len(rewrites) != wanted:
        raise ValueError(f"{len(rewrites)} rewrites for {wanted} pieces to rewrite")
    out, given = [], iter(rewrites)
    for k, piece in enumerate(pieces):
        text = next(given).strip() if piece.rewrite else piece.text
        if piece.rewrite and not text and k < len(pieces) - 1:
            continue
        out.append(text + piece.separator)
    return "".join(out)
