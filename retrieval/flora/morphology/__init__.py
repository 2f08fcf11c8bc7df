"""Morphology search over flora descriptions: lexical (BM25), dense (sentence embeddings)
and structured (traits), fused by reciprocal rank fusion.

Each signal fails differently: BM25 misses paraphrases ("saw-toothed" for serrate), dense
embeddings blur which organ a word belongs to and ignore negation, trait matching only
sees what the extractor understood. Fusing ranks keeps what each gets right. Negation is
handled where it can be: the query is rewritten for BM25 and the encoder ("not hairy"
becomes "glabrous"), and a taxon whose own traits contradict the query ("leaves not
hairy" against a tomentose leaf) is ranked after every taxon that does not.

Modules: chunks (what the encoder and BM25 read of a description), query (what they read of
a query), lexical, dense and trait_signal (one signal each, usable alone), fusion (weighted
RRF over their ranks), evidence (highlighted sentences), index (DescriptionIndex: build,
save, load, search). Names are resolved lazily.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

_API = {
    "DescriptionIndex": "index", "FORMAT_VERSION": "index",
    "SIGNALS": "fusion", "RRF_K": "fusion", "DEFAULT_WEIGHTS": "fusion", "DEFAULT_RRF_K": "fusion", "fuse": "fusion",
    "competition_ranks": "fusion",
    "chunk_text": "chunks", "chunks_of": "chunks",
    "rewrite_query": "query", "query_parts": "query",
    "lexical_tokens": "lexical", "LexicalSignal": "lexical",
    "DenseSignal": "dense", "embed_chunks": "dense",
    "TraitSignal": "trait_signal",
}
__getattr__, __all__ = lazy_exports(__name__, _API)
