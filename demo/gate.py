"""The one door into the public demo: which routes exist, whose files a request may name, what paths leave.

Why a door in front of Gradio rather than Gradio's own checks: mounted with
`gr.mount_gradio_app`, Gradio never sets `Blocks.has_launched`, and its check that
an input file was uploaded (`processing_utils._check_allowed`) returns early unless
it is set; so a message naming `/any/server/file.png` was copied into the served
cache, and a URL was fetched. `demo.server` sets the flag, and this ASGI
middleware makes the rest impossible whatever Gradio does:

- Routes: only those the page and gradio_client use are answered (the page, its
  assets and config, `/gradio_api/info`, upload, queue, served files, heartbeat);
  the rest of Gradio's routes (monitoring, proxy, run history, vibe editing,
  component servers, `/run` for API clients...) answer 404.
- Endpoints: `/gradio_api/call/{name}` only for the documented API (`/chat`,
  `/specimen`); a `queue/join` for any other event (the UI's own chat function,
  gallery clicks) only with the cookie the page itself sets, and `/run` (outside
  the queue) only for the page's small unqueued events. A script that loads
  the page first can still reach those events, which is why they run the same
  handlers and the same checks as the API.
- Files: each visitor gets a random id in an HttpOnly cookie (`herbaria_visitor`,
  set on any first response, so gradio_client keeps it from `/config`). The
  upload route's answer is recorded under that id (`demo.uploads.UploadRegistry`),
  and any request whose JSON names a file (a dict with "path", or Gradio's
  FileData, in the data or the event data) is refused with one line unless the
  file is the visitor's own upload or offered to everyone (examples, gallery
  thumbnails): server paths, URLs and other visitors' uploads alike, before
  Gradio reads, copies or fetches anything. The handlers check again
  (`demo.uploads.check_upload`), given the id in a header only this door sets.
- Own routes: the IIIF services, manifests, sheet viewer and record downloads of `demo.iiif`,
  read-only, matched by exact shape (`_OWN_GET`), ids as digits.
- Paths out: Gradio names served files by their absolute path in the cache
  folder; every JSON, HTML, event-stream and text answer has that folder
  replaced by `gradio-files` (and mapped back on the way in), and the collection
  folder and working directory cut, so no absolute server path leaves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from demo.uploads import FOREIGN_FILE, UploadRegistry

log = logging.getLogger("herbaria.demo")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "herbaria_visitor"
VISITOR_HEADER = "x-herbaria-visitor"
VIRTUAL_FILES = "gradio-files"
MAX_JSON_BYTES = 4 * 1024 * 1024
API = "/gradio_api"

NOT_FOUND = "Not found."
NO_SUCH_ENDPOINT = "This demo answers only {names} (see /gradio_api/info)."
PAGE_ONLY = "That action belongs to the demo's page; reload the page, or use {names} from an API client."
BAD_BODY = "The request body must be JSON, at most 4 MB."

_STATIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
_GET_EXACT = {"/", "/config", "/config/", "/theme.css", "/favicon.ico", "/manifest.json", "/robots.txt", "/pwa_icon",
              "/healthz", f"{API}/info", f"{API}/info/", f"{API}/theme.css", f"{API}/queue/data",
              f"{API}/upload_progress", f"{API}/startup-events", f"{API}/app_id", f"{API}/app_id/"}
_GET_PREFIXES = (*_STATIC_PREFIXES, f"{API}/file=", f"{API}/heartbeat/")
# The demo's own read-only routes (demo.iiif): IIIF services and manifests, the sheet viewer, record
# downloads, the vendored viewer script. Only these exact shapes pass, ids as digits; the handlers look
# the id up in the collection and a tile up in the list of tiles cut, so no URL text becomes a path.
_OWN_GET = re.compile(
    r"^/(?:iiif/[0-9]{1,12}/(?:info\.json|manifest\.json|(?:full|[0-9]{1,6}(?:,[0-9]{1,6}){3})/"
    r"(?:max|[0-9]{1,6},[0-9]{1,6})/0/default\.jpg)"
    r"|viewer/[0-9]{1,12}|records/[0-9]{1,12}(?:\.json|\.csv|/image)"
    r"|herbaria-static/(?:openseadragon\.min\.js|openseadragon-LICENSE\.txt))\Z")
_POST_JSON = {f"{API}/queue/join", f"{API}/cancel", f"{API}/reset", f"{API}/reset/"}
_CALL = re.compile(rf"^{API}/call/(?:v2/)?([^/]+)/?(?:/[^/]+)?$")
_RUN = re.compile(rf"^{API}/(?:run|api)/([^/]+)/?$")
_MASKED_TYPES = ("application/json", "text/html", "text/event-stream", "text/plain")


class Visitors:
    """Signed visitor ids: `<id>.<kind>.<mac>`, kind "p" once the visitor has loaded the page, else "a"."""

    def __init__(self, secret: bytes | None = None) -> None:
        env = os.environ.get("HERBARIA_COOKIE_SECRET", "")
        self.secret = secret or (env.encode() if env else secrets.token_bytes(32))

    def _mac(self, ident: str, kind: str) -> str:
        digest = hmac.new(self.secret, f"{ident}.{kind}".encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, kind: str, ident: str | None = None) -> str:
        ident = ident or secrets.token_urlsafe(16)
        return f"{ident}.{kind}.{self._mac(ident, kind)}"

    def read(self, token: str | None) -> tuple[str, str] | None:
        """(id, kind) of a genuine token, else None."""
        parts = (token or "").split(".")
        if len(parts) != 3 or parts[1] not in ("a", "p"):
            return None
        ident, kind, mac = parts
        return (ident, kind) if hmac.compare_digest(mac, self._mac(ident, kind)) else None


class PathMask:
    """Absolute server folders replaced in what leaves; the served-files folder mapped back on the way in."""

    def __init__(self, served: Path, hidden: Iterable[tuple[Path, str]] = ()) -> None:
        self.served = str(served)
        pairs: dict[str, str] = {}
        for folder in {str(served), str(served.resolve())}:
            pairs[folder] = VIRTUAL_FILES
        for folder, shown in hidden:
            for form in {str(folder), str(Path(folder).resolve())}:
                if form.count("/") >= 2:  # never "/" or "/tmp": that would cut every path
                    pairs.setdefault(form, shown)
        forms: dict[str, str] = {}
        for real, shown in pairs.items():
            for variant in {real, quote(real, safe="/"), json.dumps(real)[1:-1]}:
                forms[variant] = shown
        ordered = sorted(forms, key=len, reverse=True)
        self._out = re.compile("(?:" + "|".join(re.escape(f) for f in ordered) + r")(?=[/\"'\s\\,)\]}<&?#]|$)")
        self._forms = forms

    def outgoing(self, data: bytes) -> bytes:
        text = data.decode("utf-8", errors="surrogateescape")
        return self._out.sub(lambda m: self._forms[m.group(0)], text).encode("utf-8", errors="surrogateescape")

    def incoming(self, path: str) -> str:
        """A served-file path as the client knows it (`gradio-files/...`) back to the real one."""
        if path == VIRTUAL_FILES or path.startswith(VIRTUAL_FILES + "/"):
            return self.served + path[len(VIRTUAL_FILES):]
        return path


def _is_file_ref(value: Any) -> bool:
    return isinstance(value, dict) and (isinstance(value.get("path"), str) or (
        isinstance(value.get("meta"), dict) and value["meta"].get("_type") == "gradio.FileData"))


def claim_files(value: Any, visitor: str | None, uploads: UploadRegistry, mask: PathMask) -> bool:
    """Map every file the JSON names to its real path; False when one is not the visitor's (nothing is read)."""
    if _is_file_ref(value):
        if value.get("path") in ("", None) and not value.get("url"):
            return True  # no file at all (an example's empty icon): nothing to read or fetch
        real = mask.incoming(str(value.get("path") or ""))
        if uploads.owned(visitor, real) is not None:
            value["path"], value["url"] = real, None
            return True
        return uploads.offered_url(real) and value.get("url") in (None, real)
    if isinstance(value, dict):
        return all(claim_files(v, visitor, uploads, mask) for v in value.values())
    if isinstance(value, list):
        return all(claim_files(v, visitor, uploads, mask) for v in value)
    return True


class Gate:
    """ASGI middleware around the FastAPI app that mounts the Gradio demo (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, uploads: UploadRegistry, fns: dict[int, Any], mask: PathMask,
                 visitors: Visitors | None = None) -> None:
        self.app, self.uploads, self.mask = app, uploads, mask
        self.public_api = {fn.api_name: i for i, fn in fns.items()  # api_name -> fn_index
                           if fn.api_visibility == "public" and fn.fn is not None and fn.api_name}
        self.public_fns = set(self.public_api.values())
        self.fn_by_name = {fn.api_name: i for i, fn in fns.items() if fn.api_name}
        self.direct_fns = {i for i, fn in fns.items() if not fn.queue}  # the page runs these outside the queue
        self.names = " and ".join(f"/{n}" for n in sorted(self.public_api))
        self.visitors = visitors or Visitors()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the demo uses none: refuse the handshake
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        token = _cookie(scope, COOKIE)
        known = self.visitors.read(token)
        ident, kind = known or (None, "a")
        page = method == "GET" and path == "/"
        new_token = None
        if known is None or (page and kind != "p"):
            kind = "p" if page else kind
            new_token = self.visitors.issue(kind, ident)
            ident = new_token.split(".")[0]
        scope = self._inner_scope(scope, ident)
        reply = _Reply(send, self.mask, new_token, scope.get("scheme") == "https",
                       masked=method != "HEAD" and not path.startswith(_STATIC_PREFIXES))

        if method in ("GET", "HEAD"):
            call = _CALL.match(path)
            if (path in _GET_EXACT or path.startswith(_GET_PREFIXES) or _OWN_GET.match(path)
                    or (call and call.group(1) in self.public_api)):
                if path.startswith(f"{API}/file="):  # scope["path"] is already percent-decoded
                    scope = _with_path(scope, f"{API}/file=" + self.mask.incoming(path[len(f"{API}/file="):]))
                await self.app(scope, receive, reply)
            elif call:
                await reply.refuse(404, NO_SUCH_ENDPOINT.format(names=self.names))
            else:
                await reply.refuse(404, NOT_FOUND)
            return
        if method != "POST":
            await reply.refuse(405 if path in _GET_EXACT else 404, NOT_FOUND)
            return
        if path == f"{API}/upload":
            reply.record_upload = lambda paths: self.uploads.record(ident, paths)
            await self.app(scope, receive, reply)
            return
        call, run = _CALL.match(path), _RUN.match(path)
        if path not in _POST_JSON and not call and not run:
            await reply.refuse(404, NOT_FOUND)
            return
        if (call and call.group(1) not in self.public_api) or (run and kind != "p"):
            await reply.refuse(404, NO_SUCH_ENDPOINT.format(names=self.names))
            return
        body = await _read_body(receive, MAX_JSON_BYTES)
        try:
            payload = json.loads(body) if body is not None else None
            owned = isinstance(payload, dict) and claim_files(payload, ident, self.uploads, self.mask)
        except (ValueError, UnicodeDecodeError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            await reply.refuse(400 if body is not None else 413, BAD_BODY)
            return
        if path == f"{API}/queue/join" and kind != "p" and _fn_index(payload) not in self.public_fns:
            await reply.refuse(403, PAGE_ONLY.format(names=self.names))
            return
        if run:  # outside the queue: only the page's own small events, never a turn
            fn = _fn_index(payload) if payload.get("fn_index") is not None else self.fn_by_name.get(run.group(1))
            if fn not in self.direct_fns:
                await reply.refuse(404, NO_SUCH_ENDPOINT.format(names=self.names))
                return
        if not owned:
            log.info("refused a request naming a file the visitor did not upload (%s)", path)
            await reply.refuse(400, FOREIGN_FILE)
            return
        await self.app(_with_body_headers(scope, len(data := json.dumps(payload).encode())), _replay(data, receive),
                       reply)

    def _inner_scope(self, scope: Scope, ident: str) -> Scope:
        """The request as the app sees it: our visitor header (never the client's), and no compression of
        what must be masked (the app's Brotli middleware would otherwise encode it first)."""
        keep_encoding = scope["path"].startswith(_STATIC_PREFIXES)
        headers = [(k, v) for k, v in scope["headers"] if k != VISITOR_HEADER.encode()
                   and (keep_encoding or k != b"accept-encoding")]
        headers.append((VISITOR_HEADER.encode(), ident.encode()))
        return {**scope, "headers": headers}


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return v
    return None


def _fn_index(payload: dict[str, Any]) -> int | None:
    value = payload.get("fn_index")
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _with_path(scope: Scope, path: str) -> Scope:
    return {**scope, "path": path, "raw_path": quote(path, safe="/=:").encode()}


def _with_body_headers(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type",
                                                                   b"transfer-encoding")]
    headers += [(b"content-length", str(length).encode()), (b"content-type", b"application/json")]
    return {**scope, "headers": headers}


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Reply:
    """The response on its way out: cookie added, paths masked, the upload route's answer recorded."""

    def __init__(self, send: Send, mask: PathMask, token: str | None, https: bool, masked: bool) -> None:
        self.send, self.mask, self.token, self.https, self.masked = send, mask, token, https, masked
        self.record_upload: Callable[[list[str]], None] | None = None
        self.start: Message | None = None
        self.buffered: list[bytes] | None = None

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self.token:
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if self.https else "")
            headers = [*headers, (b"set-cookie", cookie.encode())]
        return headers

    async def refuse(self, status: int, message: str) -> None:
        body = json.dumps({"detail": message, "error": message}).encode()
        await self.send({"type": "http.response.start", "status": status,
                         "headers": self._headers([(b"content-type", b"application/json"),
                                                   (b"content-length", str(len(body)).encode())])})
        await self.send({"type": "http.response.body", "body": body})

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            ctype = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
            self.masked = self.masked and ctype.startswith(_MASKED_TYPES)
            self.start = {**message, "headers": self._headers(headers)}
            if self.masked and any(k.lower() == b"content-length" for k, _ in headers):
                self.buffered = []  # a whole answer: rewrite it, then send it with its new length
                return
            await self.send(self.start)
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        body = message.get("body", b"")
        if self.buffered is not None:
            self.buffered.append(body)
            if message.get("more_body", False):
                return
            whole = b"".join(self.buffered)
            if self.record_upload is not None and self.start and self.start["status"] == 200:
                self._record(whole)
            whole = self.mask.outgoing(whole)
            assert self.start is not None
            headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(whole)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        # Streams (event-stream) go out message by message; each Gradio message is one whole chunk.
        await self.send({**message, "body": self.mask.outgoing(body) if self.masked and body else body})

    def _record(self, body: bytes) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if isinstance(paths, list) and self.record_upload is not None:
            self.record_upload([p for p in paths if isinstance(p, str)])


def install_gate(app: Any, blocks: Any, uploads: UploadRegistry, *, hidden: Iterable[tuple[Path, str]] = ()) -> None:
    """Put the gate in front of `app` (the FastAPI app `blocks` is mounted on), and gzip outside it.

    Also sets `blocks.has_launched`, which `launch()` sets and `mount_gradio_app` forgets: without it
    Gradio skips its own check that input files were uploaded (`processing_utils._check_allowed`).
    `api_open` off: Gradio's `/run/{name}` would otherwise answer a queued event outside the queue.
    """
    from starlette.middleware.gzip import GZipMiddleware

    blocks.has_launched = True
    blocks.api_open = False  # and no turn skips the queue through /run (the gate refuses those too)
    app.add_middleware(Gate, uploads=uploads, fns=dict(blocks.fns), mask=PathMask(uploads.upload_dir, hidden))
    app.add_middleware(GZipMiddleware, minimum_size=1024)
