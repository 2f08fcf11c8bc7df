"""Shared fixtures: real data from ../shared/data when present, skipped with a reason when not."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HERBARIA_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hermetic: caches (embeddings, demo samples, maps) live in a fresh folder per run, never in ~/.cache
os.environ["HERBARIA_CACHE"] = tempfile.mkdtemp(prefix="herbaria-test-cache-")
atexit.register(shutil.rmtree, os.environ["HERBARIA_CACHE"], ignore_errors=True)
# a `herbaria worker` the developer left running must not answer the tests' commands with other code
os.environ["HERBARIA_NO_WORKER"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone ../shared beside the repo to run this test)")
    return SHARED_DATA


def closed_port() -> int:
    """A local port nobody listens on: a stand-in for "no network" that never leaves the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
