"""A static (model2vec-style) text encoder distilled from a sentence-transformers teacher (issue 9).

Why: indexing the Flora Malesiana descriptions with all-MiniLM-L6-v2 is compute-bound (a
6-layer transformer per clause); a static encoder is a table lookup and a mean, hundreds of
times faster. The recipe is model2vec's (Minish Lab, MIT), written here because
model2vec[distill] pins an older transformers: every vocabulary token ([unusedN] removed)
goes through the teacher alone as [CLS] token [SEP], its output is mean-pooled over the
three positions, the table is reduced by PCA (centred, eigenvectors of the covariance, sign
fixed so the largest score of each component is positive) and each row weighted by SIF,
sif / (sif + p), with p the Zipf probability of the token's rank in the vocabulary. The
result is saved as an ordinary SentenceTransformer folder (StaticEmbedding + Normalize), so it
loads through the same `SentenceTransformer(folder)` path as every other text model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)
RECIPE = "m2v-mean-float32-v1"  # changes the cache key when the recipe changes
REMOVE = r"\[unused\d+\]"
BATCH = 1024  # token sequences (3 positions each) per teacher pass


def pca_sif(embeddings: np.ndarray, dims: int, sif: float | None = 1e-4) -> np.ndarray:
    """Rows of `embeddings` (in vocabulary-rank order) projected on their first `dims` principal
    components (sign fixed: each component's largest absolute score is positive), then scaled by
    sif / (sif + p_rank), p the Zipf probability of rank 1..n (model2vec's weighting)."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    dims = min(dims, x.shape[1])
    if dims >= n:
        raise ValueError(f"PCA to {dims} dimensions needs more than {dims} tokens, not {n}")
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    components = vectors[:, ::-1][:, :dims]
    scores = centred @ components
    biggest = np.argmax(np.abs(scores), axis=0)
    scores *= np.sign(scores[biggest, np.arange(dims)])
    if sif is not None:
        inverse_rank = 1.0 / np.arange(2, n + 2)
        p = inverse_rank / inverse_rank.sum()
        scores *= (sif / (sif + p))[:, None]
    return scores.astype(np.float32)


def folder_for(teacher_name: str, teacher_source: str, dims: int, sif: float | None) -> Path:
    """The cache folder of one distillation: keyed by the teacher (name and weights folder, as
    TextEncoder.fingerprint is) and the recipe's settings."""
    from retrieval.cache import cache_dir

    key = hashlib.sha1(f"{teacher_name}|{Path(teacher_source).name}|{dims}|{sif}|{RECIPE}".encode()).hexdigest()[:12]
    return cache_dir() / "text-encoders" / f"static-{teacher_name}-d{dims}-{key}"


def token_vectors(teacher: Any, ids: list[int], progress: bool = True) -> np.ndarray:
    """(len(ids), hidden) float32: each token id alone through the teacher's transformer (in float32)
    as [CLS] id [SEP], mean-pooled over the three positions. Why not bfloat16 (3x faster): its token
    vectors agree with float32's to cosine 0.9999, yet that moved the PCA basis (near-equal
    eigenvalues turn), so tables distilled in either precision would not be interchangeable."""
    import torch
    from tqdm.auto import tqdm

    transformer = teacher.model[0].auto_model
    tokenizer = teacher.model[0].tokenizer
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError(f"text model {teacher.name!r} has no [CLS]/[SEP] tokens: a BERT-style teacher is needed")
    transformer = transformer.float().eval()
    out = np.empty((len(ids), transformer.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(ids), BATCH), desc=f"distilling {teacher.name}", unit=" batches", disable=not progress):
            batch = torch.tensor(ids[start:start + BATCH], dtype=torch.long)[:, None]
            input_ids = torch.cat([torch.full_like(batch, cls), batch, torch.full_like(batch, sep)], dim=1)
            hidden = transformer(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            out[start:start + len(batch)] = hidden.float().mean(dim=1).numpy()
    return np.nan_to_num(out)


def distill(teacher: Any, folder: Path, *, dims: int = 256, sif: float | None = 1e-4,
            only: Sequence[int] | None = None, progress: bool = True) -> Path:
    """Distil `teacher` (a TextEncoder on a BERT-style transformer) into a static SentenceTransformer
    saved at `folder` (written to a temporary folder beside it, then renamed: a reader never sees
    half of one). Rows of removed tokens ([unusedN]) are zero; they never come out of the tokenizer
    for real text. `only` keeps just those token ids (the rest zero): a quick, smaller table. Returns `folder`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    started = time.perf_counter()
    tokenizer = teacher.model[0].tokenizer
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"text model {teacher.name!r} has no fast (Rust) tokenizer to build a static model on")
    backend = Tokenizer.from_str(backend.to_str())  # a copy: the teacher's own tokenizer is left as it was
    vocab = backend.get_vocab()
    removed = re.compile(REMOVE)
    kept = sorted(i for token, i in vocab.items() if not removed.fullmatch(token))  # rank = id order, as model2vec
    if only is not None:
        wanted = set(only)
        kept = [i for i in kept if i in wanted]
    vectors = pca_sif(token_vectors(teacher, kept, progress), dims, sif)
    table = np.zeros((backend.get_vocab_size(), vectors.shape[1]), dtype=np.float32)
    table[kept] = vectors
    model = SentenceTransformer(modules=[StaticEmbedding(backend, embedding_weights=table), Normalize()], device="cpu")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save(str(temporary))
    try:
        os.replace(temporary, folder)
    except OSError:  # another process finished first: theirs is the same distillation
        shutil.rmtree(temporary, ignore_errors=True)
        if not (folder / "modules.json").exists():
            raise
    log.info("distilled %s into %d x %d static embeddings in %.1f s", teacher.name, len(kept), vectors.shape[1],
             time.perf_counter() - started)
    return folder
