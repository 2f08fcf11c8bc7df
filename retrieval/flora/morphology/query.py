"""What BM25 and the encoder read of a morphology query: negations turned into their opposite,
plain wording followed by the flora's term, and the query cut into the things it asks."""

from __future__ import annotations

import re
from typing import Any

from retrieval.flora.vocab import fold, vocabulary


def rewrite_query(query: str, traits: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Query text for BM25 and the encoder: a negated state is replaced by its opposite
    ('not hairy' -> 'glabrous') or dropped, and plain wording is followed by the flora's
    term ('saw-toothed' -> 'saw-toothed serrate'), in place, so each query part keeps its own."""
    voc = vocabulary()
    text = query
    extra: list[str] = []
    done: set[tuple[int, int]] = set()
    for trait in sorted(traits, key=lambda t: -t["span"][0]):
        s, e = trait["span"]
        if (s, e) in done or trait.get("implied"):
            continue
        done.add((s, e))
        if trait.get("negated"):
            opposites = [a for term in trait.get("terms", []) for a in voc.states.get(voc.concept(term), {}).get("ant", [])]
            replacement = opposites[0] if opposites else ""
            head = re.sub(r"(?:\b(?:not|non|never|pas|ne|sans|without)\s*)+$", "", text[:s], flags=re.I)
            text = head + replacement + text[e:]
        else:
            missing = [t for t in trait.get("terms", []) if fold(t) not in fold(text[s:e])]
            if missing:
                extra.extend(missing)
                text = text[:e] + " " + " ".join(missing) + text[e:]
    return " ".join(text.split()), extra


def query_parts(query: str) -> list[str]:
    """A morphology query's parts: 'opposite leaves, white flowers' asks two things.

    Cut where the trait reader cuts a query (',', ';' and ':' outside parentheses, 'and'/'et'), so
    the part BM25 and the encoder read is the part whose organ the trait signal read."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(query):
        depth = max(0, depth + (ch in "([") - (ch in ")]"))
        if ch in ",;:" and depth == 0:
            parts.append(query[start:i])
            start = i + 1
    parts.append(query[start:])
    out = [p.strip() for part in parts for p in re.split(r"\band\b|\bet\b", part)]
    out = [p for p in out if p]
    return out or [query]
