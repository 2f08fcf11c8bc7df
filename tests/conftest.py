"""Shared fixtures: real data from ../shared/data when present, skipped with a reason when not."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HERBARIA_SHARED_DATA", REPO.parent / "shared" / "data"))
CHROMIUM = Path("/usr/bin/chromium")  # Debian's (apt-get install -y chromium), driven by Playwright
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

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


def clustered_vectors(n: int, seed: int = 0, dim: int = 16) -> np.ndarray:
    """n unit vectors around 30 random centres: small stand-ins for image embeddings (filtered-search tests)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    v = (centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def closed_port() -> int:
    """A local port nobody listens on: a stand-in for "no network" that never leaves the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_chromium() -> None:
    """Skip, with the reason, where the browser tests cannot run."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextmanager
def browser_page(width: int = 1440, height: int = 1000, timeout_ms: int = 60_000) -> Iterator[Any]:
    """A Chromium page (one browser, closed on the way out) with a default timeout for every wait."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()
