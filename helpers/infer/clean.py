"""What a rewrite should not carry: chat preambles and trailers ("Sure, here is..."),
wrapping quotes, and (when cfg.cut_loops) a loop cut at the sentence before it.
"""
from __future__ import annotations

import re

from helpers.core.text_measures import loop_start

_META = r"(?:rewrit|revis|version|text|paragraph|passage|human|natural)"

_PREAMBLE_LINE = re.compile(
    rf"^\W*(?:(?:sure|certainly|of course|absolutely|okay|ok)\b[^\n]*?|"
    rf"(?:here(?:'s| is| are)|below is|the following is)\b[^\n]*?{_META}[^\n]*?|"
    rf"(?:the )?{_META}\w*(?: \w+){{0,3}})\s*[:!.]?\W*$", re.I)

_PREAMBLE_COLON = re.compile(r"^\W*(?:to rewrite|in rewriting|i'll|i will|let me|i've|i have)\b"
                             r"[^\n]*:\W*$", re.I)

_PREAMBLE_INLINE = re.compile(
    rf"^\W*(?:(?:sure|certainly|of course|absolutely|okay|ok)\W+)?"
    rf"(?:here(?:'s| is| are)|below is)\b[^\n:]{{0,80}}?{_META}[^\n:]{{0,40}}:\s*", re.I)

_TRAILER = re.compile(r"^\W*(?:i hope|let me know|feel free|note:|this rewrit|this version|"
                      r"in this (?:rewrit|version)|i (?:have|'ve) (?:rewritten|made|kept))", re.I)

_QUOTES = {'"': '"', "“": "”", "'": "'"}


def clean_output(text: str) -> str:
    """The rewrite alone: no "Sure, here is the rewritten text:", no closing "I hope this helps",
    no quotes around the whole answer."""
    text = text.strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paragraphs) > 1 and len(paragraphs[0]) < 120 and (
            _PREAMBLE_LINE.match(paragraphs[0]) or _PREAMBLE_COLON.match(paragraphs[0])):
        paragraphs.pop(0)
    while len(paragraphs) > 1 and _TRAILER.match(paragraphs[-1]):
        paragraphs.pop()
    text = "\n\n".join(paragraphs)
    lines = text.split("\n")
    if len(lines) > 1 and len(lines[0]) < 120 and (_PREAMBLE_LINE.match(lines[0])
                                                   or _PREAMBLE_COLON.match(lines[0])):
        text = "\n".join(lines[1:]).strip()
    text = _PREAMBLE_INLINE.sub("", text, count=1).strip()
    text = re.sub(r"^\*\*[^*\n]{0,60}\*\*\s*", "", text) if text.startswith("**") else text
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] \
            and text[0] not in text[1:-1] and _QUOTES[text[0]] not in text[1:-1]:
        text = text[1:-1].strip()
    return text

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")


def cut_loop(text: str) -> str:
    """A looping rewrite cut where it starts to say the same thing again (the second occurrence
    of its first repeated 8-word sequence), back to the last sentence end before that point when
    there is one: the loop is dropped, not rewritten, so no word is made up to avoid it."""
    start = loop_start(text)
    if start is None:
        return text
    head = text[:start]
    ends = list(_SENTENCE_END.finditer(head))
    return (head[:ends[-1].end()] if ends else head).rstrip(" ,;:-—\n")
