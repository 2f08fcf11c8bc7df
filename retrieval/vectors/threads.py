"""Threads per turn: torch and FAISS thread counts chosen from the cores and the server's concurrency.

Why: both default to every core, and each turn running at once gets its own OpenMP team, so a
server answering 2 turns on 2 cores runs 4 busy threads on 2 cores. Measured for issue 11: on a
busy host one thread per turn was 7.7x (image) to 20x (text) faster for the encoder pass; on an
idle host 2 threads win for a single turn. So each turn gets cores // concurrency threads (at
least 1); HERBARIA_THREADS=N overrides it (e.g. a host whose cores are shared with other work).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_turn(concurrency: int, cores: int | None = None) -> int:
    override = os.environ.get("HERBARIA_THREADS", "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError:
            log.warning("ignoring HERBARIA_THREADS=%r: not a whole number", override)
    return max(1, (cores or usable_cores()) // max(1, concurrency))


def set_threads_per_turn(concurrency: int) -> int:
    """Apply `threads_per_turn` to torch and FAISS (process-wide; call once at server start); returns it."""
    import faiss
    import torch

    threads = threads_per_turn(concurrency)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    log.info("%d thread(s) per turn for torch and FAISS (%d cores, %d turns at once)", threads, usable_cores(),
             concurrency)
    return threads
