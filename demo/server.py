"""Serve the demo: one FastAPI app with a health check, the Gradio app mounted at `/`.

Why not `Blocks.launch()`: a public demo needs a health route for the load
balancer and no other routes than Gradio's, and the tests and the load benchmark
need to start and stop the same server inside one process. The queue bounds the
work: `concurrency` turns run at once (the CPU is the limit), `queue_size` wait,
and the rest are told the demo is busy instead of piling up. `demo.gate` stands in
front of everything: routes, whose files a message may name, no server paths out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.gate import install_gate
from demo.uploads import UploadLimits, UploadRegistry

log = logging.getLogger("herbaria.demo")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def create_server(collection: str | Path, *, model: str | None = None, captioner: str = "grounded",
                  chat_model: Any = None, concurrency: int = 2, queue_size: int = 64,
                  limits: UploadLimits | None = None, assistant: Any = None,
                  client_limits: Any = None) -> Any:
    """A FastAPI app serving the chat for `collection`, with `GET /healthz`.

    `chat_model` is a `provider:model` spec or a LangChain chat model (None: $HERBARIA_CHAT_MODEL, else the
    grounded composer); `assistant` may be given to share one loaded assistant between servers.
    `client_limits` (a `demo.fairness.ClientLimits`) bounds each client's share of the queue; None: no
    per-client limit (`serve` always passes one).
    """
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from demo.app import CSS, build_app

    if assistant is None:
        from assistant.agent import HerbariaAssistant

        assistant = HerbariaAssistant(collection, model=model, captioner=captioner, chat_model=chat_model)
    from retrieval.vectors import set_threads_per_turn

    set_threads_per_turn(concurrency)  # torch and FAISS threads: cores // turns at once
    limits = limits or UploadLimits()
    root = Path(collection).resolve()
    uploads = UploadRegistry()
    blocks = build_app(assistant, root, limits=limits, uploads=uploads)
    blocks.queue(default_concurrency_limit=max(1, concurrency), max_size=max(1, queue_size))
    if client_limits is not None:
        from demo.fairness import install_client_limits

        install_client_limits(blocks, client_limits)
    info = assistant.info()
    started = time.time()

    app = FastAPI(title="Herbaria", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness and what is being served; 503 when the collection is empty."""
        body = {"ok": int(info.get("specimens") or 0) > 0, "collection": info.get("collection"),
                "specimens": info.get("specimens"), "encoder": info.get("encoder"),
                "captioner": info.get("captioner"), "uptime_s": round(time.time() - started, 1)}
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    install_specimen_routes(app, assistant, root)
    app = gr.mount_gradio_app(
        app, blocks, path="/",
        allowed_paths=[str(root / "images")],
        max_file_size=limits.max_bytes,
        show_error=False,
        ssr_mode=False,
        footer_links=["api"],
        run_history=False,
        theme=gr.themes.Soft(primary_hue="green", secondary_hue="emerald"),
        css=CSS,
    )
    install_gate(app, blocks, uploads, hidden=[(root, root.name), (Path.cwd(), ".")])
    return app


def install_specimen_routes(app: Any, assistant: Any, root: Path) -> None:
    """The IIIF services and manifests, the sheet viewer and record downloads (demo.iiif), on `app`."""
    import json

    from assistant.composer import specimen_label
    from demo.gallery import ImageStore, public_record
    from demo.iiif import IIIFStore, install_routes
    from demo.specimen_page import botanist_fields

    images = ImageStore(root)

    def record_of(specimen_id: int) -> dict[str, Any]:
        record = public_record(assistant.specimen(specimen_id), images)
        clean = json.dumps(record, default=str, allow_nan=True)
        return json.loads(clean, parse_constant=lambda c: None) if "NaN" in clean else json.loads(clean)

    install_routes(app, IIIFStore(root), record_of, label_of=specimen_label, fields_of=botanist_fields)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A server started in a background thread (tests, benchmarks); `close()` stops it."""

    url: str
    server: Any
    thread: threading.Thread

    def close(self, timeout: float = 10.0) -> None:
        # force_exit: do not wait on the idle keep-alive and event-stream connections of finished clients;
        # cancelling those is expected here, so uvicorn's report of each cancellation is muted.
        uvicorn_errors = logging.getLogger("uvicorn.error")
        level = uvicorn_errors.level
        uvicorn_errors.setLevel(logging.CRITICAL)
        try:
            self.server.should_exit = True
            self.server.force_exit = True
            self.thread.join(timeout)
        finally:
            uvicorn_errors.setLevel(level)


def start_server(app: Any, *, host: str = DEFAULT_HOST, port: int | None = None, timeout: float = 60.0) -> RunningServer:
    """Run `app` with uvicorn in a daemon thread and wait until it accepts connections."""
    import uvicorn

    port = port or _free_port(host)
    # proxy_headers=False: X-Forwarded-For is believed only from configured proxies (demo.fairness), never by default.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="herbaria-demo", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the demo server did not start on {host}:{port}")
        time.sleep(0.05)
    return RunningServer(url=f"http://{host}:{port}/", server=server, thread=thread)


def serve(collection: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model: str | None = None,
          captioner: str = "grounded", chat_model: Any = None, concurrency: int = 2,
          queue_size: int = 64, client_limits: Any = None) -> None:
    """Stage: serve the chat for `collection` until interrupted (blocking); `client_limits` None: from the
    environment or the defaults (`demo.fairness.ClientLimits.from_settings`)."""
    import uvicorn

    from retrieval.errors import BadInput

    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise BadInput(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None
    from demo.fairness import ClientLimits

    client_limits = client_limits or ClientLimits.from_settings()
    app = create_server(collection, model=model, captioner=captioner, chat_model=chat_model,
                        concurrency=concurrency, queue_size=queue_size, client_limits=client_limits)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"Herbaria is serving {Path(collection).name} at http://{shown}:{port}/  (health: /healthz; Ctrl-C stops)",
          flush=True)
    logging.getLogger("herbaria.demo").setLevel(logging.INFO)
    print(f"  {client_limits.describe()}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
