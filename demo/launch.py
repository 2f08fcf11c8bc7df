"""The `herbaria serve` and `herbaria demo` stages: settings as plain values in, the chat served until Ctrl-C.

Why apart from `demo.server`: here settings become the server's objects (the chat
model, the per-client limits) and the demo's sample is prepared first, so the command
line only passes its options on; `demo.server` stays the part that tests and the load
benchmark start inside one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demo.fairness import ClientLimits
from demo.sample import DEFAULT_PER_TAXON, DEFAULT_SAMPLE, DEFAULT_TEXT_MODEL, prepare_demo
from demo.server import DEFAULT_HOST, DEFAULT_PORT, serve


def _chat_model(spec: str | None, base_url: str | None) -> Any:
    if not (spec or base_url):
        return None  # the assistant still reads $HERBARIA_CHAT_MODEL
    from assistant.chat import load_chat_model

    return load_chat_model(spec, base_url=base_url)


def serve_collection(collection: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                     model: str | None = None, captioner: str = "grounded", chat_model: str | None = None,
                     chat_base_url: str | None = None, concurrency: int = 2, queue_size: int = 64,
                     per_client_queue: int | None = None, per_client_concurrency: int | None = None,
                     trusted_proxies: str | None = None) -> None:
    """Stage: serve the chat for an ingested and indexed `collection` (blocking).

    `chat_model` and `chat_base_url` None: $HERBARIA_CHAT_MODEL, else the grounded composer; the
    per-client settings None: the environment, else the defaults (`ClientLimits.from_settings`).
    """
    chat = _chat_model(chat_model, chat_base_url)
    client_limits = ClientLimits.from_settings(per_client_queue, per_client_concurrency, trusted_proxies)
    serve(collection, host=host, port=port, model=model, captioner=captioner, chat_model=chat,
          concurrency=concurrency, queue_size=queue_size, client_limits=client_limits)


def serve_demo(collection: str | Path | None = None, *, sample: int = DEFAULT_SAMPLE, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, model: str | None = None, captioner: str = "grounded",
               chat_model: str | None = None, chat_base_url: str | None = None, concurrency: int = 2,
               queue_size: int = 64, per_client_queue: int | None = None, per_client_concurrency: int | None = None,
               trusted_proxies: str | None = None, gbif_api: str | None = None, flora_url: str | None = None,
               flora_volumes: Sequence[str] | None = None, per_taxon: int = DEFAULT_PER_TAXON,
               text_model: str = DEFAULT_TEXT_MODEL) -> None:
    """Stage: `collection` indexed when it is not yet (or, without one, `sample` sheets of described taxa
    fetched from GBIF, indexed, with their flora and GBIF descriptions), then served as `serve_collection`
    serves it. `gbif_api`, `flora_url` None: the environment, else the public hosts (demo.sample)."""
    client_limits = ClientLimits.from_settings(per_client_queue, per_client_concurrency,
                                               trusted_proxies)  # a bad setting fails before the download
    folder = prepare_demo(collection, model=model, sample=sample, progress=True, gbif_api=gbif_api,
                          flora_url=flora_url, volumes=flora_volumes, per_taxon=per_taxon, text_model=text_model)
    serve(folder, host=host, port=port, model=model, captioner=captioner,
          chat_model=_chat_model(chat_model, chat_base_url), concurrency=concurrency, queue_size=queue_size,
          client_limits=client_limits)
