"""Vectors: specimen images as CLIP-family embeddings in a FAISS index.

Owns the image/text encoder (open_clip, the `hf-hub:` / `local-dir:` presets), the specimen index
and its manifest (which encoder built it; versioned saves), the indexing stage, and the metadata
filters that run inside the search. Names are resolved lazily: importing this package does not
import torch.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

_API = {
    "ClipEncoder": "encoder", "ImageInput": "encoder", "create_encoder": "encoder", "load_open_clip": "encoder",
    "pick_device": "encoder", "pick_dtype": "encoder", "weights_fingerprint": "encoder",
    "SpecimenIndex": "index", "index_version": "index", "factory_for": "index", "check_compatible": "index",
    "choose_index": "index", "open_shared": "index",
    "sha256_file": "store",
    "build_index": "indexing", "index_dir": "indexing",
    "threads_per_turn": "threads", "set_threads_per_turn": "threads",
}
__getattr__, __all__ = lazy_exports(__name__, _API)
