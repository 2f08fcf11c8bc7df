"""`herbaria worker`: one process that keeps the libraries and models loaded between commands.

Why: a fresh `herbaria search` spends seconds importing torch, open_clip and sentence-transformers and loading the
encoders before it does a millisecond of searching. While a worker runs, `search`, `ask`, `caption` and `traits`
hand their arguments to it and print what it prints; without one (or when it does not answer) they run in their
own process as before, so the worker is a cache, never a requirement.

The worker listens on a Unix socket inside a folder only its user may enter (0700), runs one command at a time in
the caller's working directory, and runs no other command than those four.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from herbaria.cli.common import register_commands
from retrieval.errors import BadInput

SOCKET_ENV = "HERBARIA_WORKER_SOCKET"
OFF_ENV = "HERBARIA_NO_WORKER"
FORWARDED = ("search", "ask", "caption", "traits")
MAX_REQUEST = 1 << 20
_serving = threading.local()  # set while this thread runs a forwarded command: it must not forward it again


def socket_path() -> Path:
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"herbaria-{os.getuid()}" / "worker.sock"


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def forward(argv: Sequence[str]) -> int | None:
    """Run `argv` in the worker and print its output; None when no worker answers (the caller runs it itself)."""
    path = socket_path()
    if os.environ.get(OFF_ENV) or getattr(_serving, "active", False) or _command(argv) not in FORWARDED \
            or not path.exists():
        return None
    request = {"argv": list(argv), "cwd": os.getcwd(), "tty": sys.stdout.isatty()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(_read_line(conn, limit=None))
    except (OSError, ValueError):
        return None  # a stale socket or a worker that went away: run here
    sys.stdout.write(reply["stdout"])
    sys.stderr.write(reply["stderr"])
    sys.stdout.flush()
    return int(reply["rc"])


def _read_line(conn: socket.socket, *, limit: int | None) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if limit is not None and len(data) > limit:
            raise ValueError("request too large")
    return data


class _Output(io.StringIO):
    """Captured output that answers isatty() as the caller's terminal does (so `ask` renders the same)."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """One forwarded command, run in this process (its models stay loaded for the next)."""
    from herbaria.cli import main

    argv = [str(a) for a in request.get("argv") or []]
    out, err = _Output(bool(request.get("tty"))), _Output(False)
    if _command(argv) not in FORWARDED:
        return {"rc": 2, "stdout": "", "stderr": f"herbaria worker: runs only {', '.join(FORWARDED)}\n"}
    here = os.getcwd()
    try:
        os.chdir(str(request.get("cwd") or here))
        _serving.active = True
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        _serving.active = False
        os.chdir(here)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def serve(path: Path, *, max_calls: int | None = None) -> None:
    """Answer forwarded commands on `path` until interrupted (or after `max_calls`)."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise BadInput(f"{folder} belongs to another user; set {SOCKET_ENV} to a path of your own")
    os.chmod(folder, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    calls = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(8)
        try:
            while max_calls is None or calls < max_calls:
                conn, _ = server.accept()
                with conn:
                    try:
                        reply = handle(json.loads(_read_line(conn, limit=MAX_REQUEST)))
                    except (ValueError, OSError) as err:
                        reply = {"rc": 2, "stdout": "", "stderr": f"herbaria worker: bad request ({err})\n"}
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                calls += 1
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _cmd_worker(args: argparse.Namespace) -> int:
    path = Path(args.socket) if args.socket else socket_path()
    print(f"herbaria worker on {path}: `search`, `ask`, `caption` and `traits` now run here (Ctrl-C stops it)",
          file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        serve(path)
    return 0


def _add_worker(sub: Any) -> None:
    p = sub.add_parser("worker", help="keep models loaded so that search, ask, caption and traits answer at once")
    p.add_argument("--socket", help=f"Unix socket path (default ${SOCKET_ENV}, else a private folder per user)")
    p.set_defaults(handler=_cmd_worker)


COMMANDS = {"worker": _add_worker}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
