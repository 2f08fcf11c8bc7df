"""`herbaria serve` and `herbaria demo`: the chat web app (the stages are `demo.launch`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import register_commands


def _add_server_options(p: Any) -> None:
    from demo.server import DEFAULT_HOST, DEFAULT_PORT

    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                                                         "0.0.0.0 to serve the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--model", help="encoder (default: the one the collection's index was built with)")
    p.add_argument("--captioner", default="grounded", help="trait captioner: grounded (default), a trained one, none")
    p.add_argument("--chat-model", help="compose answers with a chat model, e.g. ollama:llama3.1 "
                                        "(default: $HERBARIA_CHAT_MODEL, else the grounded composer)")
    p.add_argument("--chat-base-url", help="URL of an OpenAI-compatible or Ollama server for --chat-model")
    p.add_argument("--concurrency", type=int, default=2, help="turns answered at once (default 2)")
    p.add_argument("--queue-size", type=int, default=64, help="turns allowed to wait (default 64)")
    p.add_argument("--per-client-queue", type=int, help="turns one client (IP address) may have waiting or running; "
                                                        "more are refused with HTTP 429 (default "
                                                        "$HERBARIA_PER_CLIENT_QUEUE, else 4; 0 = no limit)")
    p.add_argument("--per-client-concurrency", type=int, help="of those, turns answered at once (default "
                                                              "$HERBARIA_PER_CLIENT_CONCURRENCY, else 1; 0 = no limit)")
    p.add_argument("--trusted-proxies", help="comma-separated addresses or networks of your reverse proxies, whose "
                                             "X-Forwarded-For names the client (default $HERBARIA_TRUSTED_PROXIES, "
                                             "else none)")


def _server_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"host": args.host, "port": args.port, "model": args.model, "captioner": args.captioner,
            "chat_model": args.chat_model, "chat_base_url": args.chat_base_url, "concurrency": args.concurrency,
            "queue_size": args.queue_size, "per_client_queue": args.per_client_queue,
            "per_client_concurrency": args.per_client_concurrency, "trusted_proxies": args.trusted_proxies}


def _cmd_serve(args: argparse.Namespace) -> int:
    from demo.launch import serve_collection

    serve_collection(args.collection, **_server_settings(args))
    return 0


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the chat web app for a collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_serve)


def _cmd_demo(args: argparse.Namespace) -> int:
    from demo.launch import serve_demo

    serve_demo(args.collection, sample=args.sample, gbif_api=args.gbif_api, flora_url=args.flora_url,
               flora_volumes=args.flora_volume, per_taxon=args.per_taxon, text_model=args.text_model,
               **_server_settings(args))
    return 0


def _add_demo(sub: Any) -> None:
    from demo.sample import DEFAULT_GBIF_API, DEFAULT_PER_TAXON, DEFAULT_SAMPLE, DEFAULT_TEXT_MODEL, DEFAULT_VOLUMES

    p = sub.add_parser("demo", help="fetch a described sample collection and the encoder (or use --collection), "
                                    "index, serve")
    p.add_argument("--collection", help="serve this collection (indexed first when needed) instead of the "
                                        "GBIF sample; works offline with --model tiny-test")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"sheets of the MNHN Paris herbarium to fetch from GBIF, all of taxa the flora volumes "
                        f"describe (default {DEFAULT_SAMPLE})")
    p.add_argument("--per-taxon", type=int, default=DEFAULT_PER_TAXON,
                   help=f"at most this many sheets of one taxon (default {DEFAULT_PER_TAXON})")
    p.add_argument("--gbif-api", help=f"GBIF API base URL (default $HERBARIA_GBIF_API, else {DEFAULT_GBIF_API})")
    p.add_argument("--flora-url", help="base URL of the FlorML files (default $HERBARIA_FLORA_URL, else the FLOPO "
                                       "project's files on GitHub)")
    p.add_argument("--flora-volume", action="append", metavar="PATH",
                   help="a FlorML file under --flora-url (repeat; default: "
                        f"{', '.join(v.rsplit('/', 1)[-1] for v in DEFAULT_VOLUMES)})")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL,
                   help=f"text encoder for the descriptions (default {DEFAULT_TEXT_MODEL})")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_demo)


COMMANDS = {"serve": _add_serve, "demo": _add_demo}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
