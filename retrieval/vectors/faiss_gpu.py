"""FAISS on GPUs where the optional faiss-gpu wheel is installed; CPU stays the default.

Why only here: the served index lives in RAM (memory-mapped on disk) and answers one query at a
time, where a GPU buys little; the heavy FAISS work is k-means when an IVF index is trained
(millions of vectors) and bulk searches (benchmarks, evaluation), and those move to the GPUs
when `faiss.get_num_gpus()` says there are some. HERBARIA_FAISS_GPU=0 keeps them on CPU.
"""

from __future__ import annotations

import os

import faiss


def faiss_gpu_count() -> int:
    """GPUs FAISS can use: 0 with the default faiss-cpu wheel, or when HERBARIA_FAISS_GPU=0."""
    if os.environ.get("HERBARIA_FAISS_GPU", "1") == "0":
        return 0
    counter = getattr(faiss, "get_num_gpus", None)
    return int(counter()) if counter is not None else 0


def train_on_gpus(index: faiss.Index) -> bool:
    """Let an untrained IVF index (inside its IDMap) run k-means on the GPUs; True when it will.

    Only the clustering index moves: the trained index stays a CPU index, saved as always."""
    if faiss_gpu_count() == 0 or index.is_trained:
        return False
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # flat or HNSW: nothing to cluster
        return False
    clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    ivf.clustering_index = clustering
    # SWIG does not own it: keep it alive as long as the index (faiss's own convention)
    index.referenced_objects = [*getattr(index, "referenced_objects", []), clustering]
    return True


def searcher(index: faiss.Index) -> faiss.Index:
    """A copy of `index` on all GPUs for bulk searches, or `index` itself without GPUs."""
    return faiss.index_cpu_to_all_gpus(index) if faiss_gpu_count() else index
