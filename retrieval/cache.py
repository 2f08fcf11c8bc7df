"""Where Herbaria keeps what it can rebuild: embeddings, taxon prompt vectors, tiny test models, demo samples.

One place, so that `$HERBARIA_CACHE` moves all of it (the tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$HERBARIA_CACHE, else ~/.cache/herbaria."""
    return Path(os.environ.get("HERBARIA_CACHE") or Path.home() / ".cache" / "herbaria").expanduser()
