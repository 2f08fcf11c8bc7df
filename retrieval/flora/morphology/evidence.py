"""Evidence sentences with the matched words in **bold** (Markdown, as the chat shows it)."""

from __future__ import annotations

import re

from retrieval.flora.morphology.lexical import lexical_tokens


def word_spans(text: str, span: tuple[int, int], words: set[str]) -> list[list[int]]:
    """Spans of the words inside `span` whose lexical tokens are among `words` (the query's)."""
    out = []
    for m in re.finditer(r"[^\W\d_]+(?:-[^\W\d_]+)*", text[span[0]:span[1]]):
        tokens = lexical_tokens(m.group(0))
        if tokens and any(t in words for t in tokens):
            out.append([span[0] + m.start(), span[0] + m.end()])
    return out


def highlight(text: str, span: tuple[int, int], marks: list[list[int]]) -> str:
    """The sentence with the matched words in **bold**."""
    s, e = span
    pieces: list[str] = []
    pos = s
    for a, b in sorted((max(a, s), min(b, e)) for a, b in marks if a < e and b > s):
        if a < pos:
            continue
        pieces += [text[pos:a], "**", text[a:b], "**"]
        pos = b
    pieces.append(text[pos:e])
    return "".join(pieces).strip()
