"""Trait extraction: flora description text -> (organ, character, value) triples.

Floras write in a telegraphic, organ-first style ("Leaves opposite; blade elliptic to
obovate, 3-5 cm long, margin serrate, glabrous above"): the organ named at the head of a
clause governs what follows, parts ("blade", "lobes") attach to the organ in force,
positions ("margin", "apex", "beneath") qualify single characters, and numbers carry
their own dimension. This is a vocabulary-driven reader of that style, in English and
French, with negation ("not serrate", "sans stipules"), ranges, frequency modifiers
("usually", "rarely") and the organ carried across clauses. Queries are read with the
same code, which is why "opposite serrate leaves" (attributive order) is handled too.

Modules, in reading order: `tokens` (sentences, tokens; numbers through `measures`),
`clauses` (clauses, segments, their head organs), `states` (runs of states, negation,
positions, counts and measurements of the organs in force), `reader` (the reader that
walks a text through them, and the public entry points); `words` holds the function words.
"""

from __future__ import annotations

from retrieval.flora.traits.measures import MAX_COUNT, plausible_count
from retrieval.flora.traits.reader import extract_traits, trait_table, triple
from retrieval.flora.traits.tokens import Token, split_sentences, tokenize

__all__ = ["MAX_COUNT", "Token", "extract_traits", "plausible_count", "split_sentences", "tokenize", "trait_table", "triple"]
