"""`herbaria` command line: each subcommand maps its options onto one stage function.

Errors reach the user as one line on stderr; exit code 2 for bad input, 1 for any
other failure, and a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from retrieval.errors import BadInput, HerbariaError

Handler = Callable[[argparse.Namespace], int | None]


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- commands
# Each `_cmd_*` turns parsed options into a call of a stage function; imports stay
# inside so that `herbaria --help` does not load torch.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herbaria", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    order = ("ingest", "index", "descriptions", "search", "traits", "caption", "train_captioner", "ask", "serve", "demo")
    rank = {f"_register_{name}": i for i, name in enumerate(order)}
    for register in sorted(_REGISTRARS, key=lambda f: rank.get(f.__name__, len(order))):  # help in workflow order
        register(sub)
    return parser


_REGISTRARS: list[Callable[[Any], None]] = []


def _table(rows: list[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """A readable table on stdout (rich), the default output of listing commands."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _add_wait_option(p: Any) -> None:
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="while another command writes to the collection, wait this long for it (default 60), "
                        "then exit 2 saying it is busy")


def _cmd_index(args: argparse.Namespace) -> int:
    from retrieval.indexing import build_index

    summary = build_index(args.collection, model=args.model, preset=args.preset, rebuild=args.rebuild,
                          batch_size=args.batch_size, device=args.device, precision=args.precision, wait=args.wait)
    if args.json:
        _print_json(summary)
    else:
        print(f"indexed {summary['added']} images with {summary['encoder']} ({summary['factory']}); "
              f"{summary['total']} in the index, {summary['skipped']} skipped, {summary['seconds']} s")
    return 0


def _register_index(sub: Any) -> None:
    p = sub.add_parser("index", help="encode a collection's images into its FAISS index")
    p.add_argument("collection", help="collection folder (made by `herbaria ingest`)")
    p.add_argument("--model", help="encoder preset or hf-hub:/local-dir: checkpoint (default: the index's, else bioclip)")
    p.add_argument("--preset", default="auto", help="index preset: auto, exact, ivf, hnsw")
    p.add_argument("--rebuild", action="store_true", help="start a new index (needed to change the encoder)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    _add_wait_option(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_index)


SEARCH_COLUMNS = ("rank", "score", "catalogNumber", "institutionCode", "scientificName", "family", "country", "year")


def _cmd_search(args: argparse.Namespace) -> int:
    from retrieval.search import search_collection

    if not (args.query and args.query.strip()) and not args.image:
        raise BadInput("empty query: give some text or --image PATH")
    results = search_collection(args.collection, text=args.query, image=args.image, k=args.k,
                                filters=args.filter, model=args.model)
    if args.json:
        _print_json(results)
    elif not results:
        print("no matching specimens")
    else:
        _table([{**r, "image": Path(str(r["image"] or "")).name} for r in results], SEARCH_COLUMNS + ("image",))
        for hit in results:
            for item in (hit.get("description") or {}).get("evidence", [])[:2]:
                print(f"  {hit['rank']}. {hit['description']['name']}: {item['highlighted']}")
    return 0


def _register_search(sub: Any) -> None:
    p = sub.add_parser("search", help="search specimens by text and/or image, fusing the image index with the flora descriptions")
    p.add_argument("collection")
    p.add_argument("query", nargs="?", default=None, help='text, e.g. "opposite serrate leaves"')
    p.add_argument("--image", help="query image path")
    p.add_argument("--k", type=int, default=10, help="number of results")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="family, genus, scientificName, country, institution, year (1900-1950); repeatable")
    p.add_argument("--model", help="encoder to check against the index (default: the index's)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=_cmd_search, trailing_text="query")


_REGISTRARS += [_register_index, _register_search]


def _parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, term = pair.partition("=")
        if not sep or not column.strip() or not term.strip():
            raise BadInput(f"--map expects COLUMN=dwcTerm (e.g. species=scientificName), not '{pair}'")
        mapping[column.strip()] = term.strip()
    return mapping


def _cmd_ingest(args: argparse.Namespace) -> int:
    from retrieval.ingest import ingest

    summary = ingest(args.source, args.out, mapping=_parse_mapping(args.map), limit=args.limit,
                     progress=not (args.json or args.quiet), cache_dir=args.cache_dir,
                     download=not args.no_download, wait=args.wait)
    if args.json:
        _print_json(summary)
        return 0
    print(f"{summary['source']}: read {summary['read']}, added {summary['added']}, updated {summary['updated']}, "
          f"unchanged {summary['unchanged']}, skipped {summary['skipped']}, "
          f"stored without image {summary['no_image']}")
    for reason, count in sorted(summary["reasons"].items(), key=lambda item: -item[1]):
        print(f"  {count} x {reason}")
    print(f"collection {summary['collection']}: {summary['total']} specimens, {summary['with_image']} with images")
    return 0


def _register_ingest(sub: Any) -> None:
    p = sub.add_parser("ingest", help="add specimens from an image folder, Darwin Core Archive or GBIF JSON")
    p.add_argument("source", help="folder with labels.csv, DwC-A (.zip/.tgz/folder with meta.xml) or GBIF .json")
    p.add_argument("--out", required=True, help="collection folder (created when new)")
    p.add_argument("--limit", type=int, help="read at most N records")
    p.add_argument("--map", action="extend", nargs="+", default=[], metavar="COLUMN=TERM",
                   help="map a source column onto a Darwin Core term (or 'media' for the image file)")
    p.add_argument("--cache-dir", help="where downloaded media are cached (default: COLLECTION/media-cache)")
    p.add_argument("--no-download", action="store_true", help="store remote specimens without fetching images")
    _add_wait_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_ingest)


_REGISTRARS.append(_register_ingest)


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


def _client_limits(args: argparse.Namespace) -> Any:
    from demo.fairness import ClientLimits

    return ClientLimits.from_settings(args.per_client_queue, args.per_client_concurrency, args.trusted_proxies)


def _chat_model(args: argparse.Namespace) -> Any:
    if not (args.chat_model or args.chat_base_url):
        return None  # the assistant still reads $HERBARIA_CHAT_MODEL
    from assistant.chat import load_chat_model

    return load_chat_model(args.chat_model, base_url=args.chat_base_url)


def _cmd_serve(args: argparse.Namespace) -> int:
    from demo.server import serve

    serve(args.collection, host=args.host, port=args.port, model=args.model, captioner=args.captioner,
          chat_model=_chat_model(args), concurrency=args.concurrency, queue_size=args.queue_size,
          client_limits=_client_limits(args))
    return 0


def _register_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the chat web app for a collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_serve)


def _cmd_demo(args: argparse.Namespace) -> int:
    from demo.sample import prepare_demo
    from demo.server import serve

    client_limits = _client_limits(args)  # a bad option fails before the download
    folder = prepare_demo(args.collection, model=args.model, sample=args.sample, progress=True)
    serve(folder, host=args.host, port=args.port, model=args.model, captioner=args.captioner,
          chat_model=_chat_model(args), concurrency=args.concurrency, queue_size=args.queue_size,
          client_limits=client_limits)
    return 0


def _register_demo(sub: Any) -> None:
    from demo.sample import DEFAULT_SAMPLE

    p = sub.add_parser("demo", help="fetch a sample collection and the encoder (or use --collection), index, serve")
    p.add_argument("--collection", help="serve this collection (indexed first when needed) instead of the "
                                        "GBIF sample; works offline with --model tiny-test")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"sheets of the MNHN Paris herbarium to fetch from GBIF (default {DEFAULT_SAMPLE})")
    _add_server_options(p)
    p.set_defaults(handler=_cmd_demo)


_REGISTRARS += [_register_serve, _register_demo]


ASK_COLUMNS = ("rank", "score", "citation", "scientificName", "country", "year", "image")


def _cmd_ask(args: argparse.Namespace) -> int:
    from pathlib import Path

    from assistant.agent import HerbariaAssistant, TurnResult
    from assistant.composer import citation

    state_file = Path(args.state) if args.state else None
    state = json.loads(state_file.read_text()) if state_file and state_file.is_file() else None
    from assistant.chat import load_chat_model

    assistant = HerbariaAssistant(args.collection, model=args.model, captioner=args.captioner,
                                  chat_model=load_chat_model(args.chat_model, base_url=args.chat_base_url))
    result: TurnResult | None = None
    for item in assistant.stream(args.question or "", args.image, filters=args.filter, state=state):
        if isinstance(item, TurnResult):
            result = item
        elif not args.json:
            sys.stdout.write(item)
            sys.stdout.flush()
    assert result is not None
    if state_file:
        state_file.write_text(json.dumps(result.state))
    if args.json:
        _print_json(result.to_dict())
    elif result.specimens:
        print()
        _table([{**r, "citation": citation(r)} for r in result.specimens], ASK_COLUMNS)
    else:
        print()
    return 0


def _register_ask(sub: Any) -> None:
    p = sub.add_parser("ask", help="ask the assistant one question (text and/or an image) about a collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    p.add_argument("question", nargs="?", default="", help='e.g. "how do the leaves of Geranium maculatum look?"')
    p.add_argument("--image", help="a specimen photo to describe, identify and match")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="family, genus, scientificName, country, institution, year (1900-1950); repeatable")
    p.add_argument("--model", help="encoder (default: the one the collection's index was built with)")
    p.add_argument("--captioner", default="grounded", help="captioner for images (default grounded; 'none' to skip)")
    p.add_argument("--chat-model", help="compose with a chat model, e.g. ollama:llama3.1 or openai:MODEL "
                                        "(default $HERBARIA_CHAT_MODEL, else the built-in grounded composer)")
    p.add_argument("--chat-base-url", help="server of the chat model (Ollama, OpenAI-compatible); "
                                           "default $HERBARIA_CHAT_BASE_URL")
    p.add_argument("--state", metavar="FILE", help="conversation state file: read before, written after, "
                                                  "so a next `ask` can say 'only Rubiaceae'")
    p.add_argument("--json", action="store_true", help="print the whole turn (answer, specimens, taxa, state) as JSON")
    p.set_defaults(handler=_cmd_ask, trailing_text="question")


_REGISTRARS.append(_register_ask)


def _cmd_caption(args: argparse.Namespace) -> int:
    from captioning.api import caption_image

    result = caption_image(args.collection, args.image, captioner=args.captioner, k=args.k, model=args.model,
                           device=args.device, precision=args.precision, strategy=args.strategy, num_beams=args.beams,
                           max_new_tokens=args.max_tokens, seed=args.seed)
    if args.json:
        _print_json(result)
        return 0
    print(result["text"])
    if result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    n = result["k"] if result["neighbours"] else 0
    for organ in result["organs"]:
        for t in organ["traits"]:
            value = ("not " if t["negated"] else "") + t["value"]
            print(f"  {organ['organ']:<14} {t['character']:<16} {value:<28} {t['count']}/{t['of']}")
    for taxon in result["taxa"][:5]:
        print(f"  candidate: {taxon['name']} ({taxon['count']}/{taxon['of']}, best similarity {taxon['best_score']})")
    print(f"captioner {result['captioner']}, {n} neighbours ({result['described_neighbours']} with a described taxon), "
          f"encoder {result['encoder']}, {result['seconds']} s", file=sys.stderr)
    return 0


def _register_caption(sub: Any) -> None:
    p = sub.add_parser("caption", help="describe a specimen image organ by organ, grounded in the collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    p.add_argument("image", help="image file (photo or herbarium sheet)")
    p.add_argument("--captioner", default="grounded",
                   help="grounded (default), trained (this collection's), a preset (tiny-test, decoder-gpt2, blip-base, "
                        "coca-vit-b-32) or local-dir:PATH")
    p.add_argument("--k", type=int, default=8, help="similar specimens to ground the description in (default 8)")
    p.add_argument("--model", help="encoder (default: the one the collection's index was built with)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "int8", "bf16", "fp32", "fp16"), default="auto",
                   help="neural captioners: auto = int8 decoding on CPUs, bf16 on GPUs (default)")
    p.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="greedy",
                   help="decoding for neural captioners (default greedy)")
    p.add_argument("--beams", type=int, default=3, help="beams for --strategy beam (default 3)")
    p.add_argument("--max-tokens", type=int, default=60, help="new tokens per organ section (default 60)")
    p.add_argument("--seed", type=int, help="seed for --strategy sample")
    p.add_argument("--json", action="store_true", help="print the whole result (organs, support, taxa, neighbours) as JSON")
    p.set_defaults(handler=_cmd_caption)


def _cmd_train_captioner(args: argparse.Namespace) -> int:
    from captioning.api import train_captioner

    summary = train_captioner(args.collection, captioner=args.captioner, out=args.out, encoder=args.encoder, k=args.k,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, scope=args.scope,
                              val_fraction=args.val_fraction, resume=not args.no_resume,
                              mixed_precision=args.mixed_precision, seed=args.seed, device=args.device,
                              max_steps=args.max_steps, progress=not (args.quiet or args.json), wait=args.wait)
    if args.json:
        _print_json(summary)
        return 0
    losses = summary["history"]
    first, last = (losses[0]["loss"], losses[-1]["loss"]) if losses else (None, None)
    print(f"trained {summary['captioner']} on {summary['train_pairs']} specimens of {summary['taxa']} taxa "
          f"({summary['examples']} organ sections), {summary['epochs']} epochs, loss {first} -> {last}")
    for who, scores in summary["validation"].items():
        if isinstance(scores, dict) and "bleu4" in scores:
            print(f"  validation {who:<9} n={scores['n']} BLEU-4 {scores['bleu4']} ROUGE-L {scores['rouge_l']} "
                  f"trait F1 {scores['trait_f1']}")
    print(f"saved to {summary['out']}; caption with --captioner trained")
    return 0


def _register_train_captioner(sub: Any) -> None:
    p = sub.add_parser("train-captioner", help="train a trait-description decoder on the collection's images and descriptions")
    p.add_argument("collection", help="collection folder with images, an index and taxon descriptions")
    p.add_argument("--captioner", default="decoder-distilgpt2",
                   help="starting point: decoder-distilgpt2 (default), decoder-gpt2 or tiny-test")
    p.add_argument("--out", help="output folder (default COLLECTION/captioner)")
    p.add_argument("--encoder", help="image encoder (default: the index's, so captioning reuses its image pass)")
    p.add_argument("--k", type=int, default=8, help="neighbours whose descriptions prompt the decoder (0: none)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4 for a pretrained LM, 1e-3 from scratch)")
    p.add_argument("--scope", choices=("auto", "all", "cross"), default="auto",
                   help="what to train: all weights, or only cross-attention and the image bridge (SmallCap)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="specimens held out for the validation report")
    p.add_argument("--no-resume", action="store_true", help="start again instead of resuming from the checkpoint")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda (default: cuda when available; several GPUs via `accelerate launch`)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (the checkpoint lets a later run resume)")
    _add_wait_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_train_captioner)


_REGISTRARS += [_register_caption, _register_train_captioner]


def _cmd_finetune(args: argparse.Namespace) -> int:
    from finetuning import finetune
    from finetuning.evaluate import format_report

    summary = finetune(args.collection, model=args.model, objective=args.objective, out=args.out, epochs=args.epochs,
                       batch_size=args.batch_size, per_taxon=args.per_taxon, grad_accum=args.grad_accum, lr=args.lr,
                       weight_decay=args.weight_decay, warmup=args.warmup,
                       image_blocks=0 if args.lit else args.image_blocks, text_blocks=args.text_blocks,
                       lora_rank=args.lora_rank, temperature=args.temperature, captioner=args.captioner,
                       itc_weight=args.itc_weight, caption_weight=args.caption_weight, momentum=args.momentum,
                       queue_size=args.queue_size, alpha=args.alpha, heldout_taxa=args.heldout_taxa,
                       heldout_specimens=args.heldout_specimens, mixed_precision=args.mixed_precision,
                       grad_checkpointing=args.grad_checkpointing, device=args.device, num_workers=args.workers,
                       seed=args.seed, resume=not args.no_resume, save_every=args.save_every, max_steps=args.max_steps,
                       evaluate=not args.no_eval, progress=not (args.quiet or args.json))
    if args.json:
        _print_json(summary)
    else:
        print(format_report(summary))
    return 0


def _register_finetune(sub: Any) -> None:
    p = sub.add_parser("finetune", help="adapt the image-text encoder to the collection's sheets and descriptions")
    p.add_argument("collection", help="collection folder with named specimen images (descriptions optional)")
    p.add_argument("--model", default="bioclip", help="encoder to start from: a preset or hf-hub:/local-dir: (default bioclip)")
    p.add_argument("--objective", choices=("contrastive", "multitask"), default="contrastive",
                   help="contrastive, or multitask: + captioning loss, momentum encoders, feature queue, distillation")
    p.add_argument("--out", help="checkpoint folder (default COLLECTION/finetuned); use it as --model local-dir:OUT")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--per-taxon", type=int, default=2, help="sheets of one taxon per batch (default 2)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-5 for pretrained weights, 5e-4 from scratch)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="(norms, biases, embeddings, temperature skipped)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps warming up before cosine decay")
    p.add_argument("--image-blocks", default="auto", help="trailing image blocks that train: auto, all or N (0 locks)")
    p.add_argument("--text-blocks", default="auto", help="trailing text blocks that train: auto, all or N (0 locks)")
    p.add_argument("--lit", action="store_true", help="LiT: lock the image tower (same as --image-blocks 0)")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead (needs peft)")
    p.add_argument("--temperature", default="learned", help="learned (default) or a fixed value such as 0.07")
    p.add_argument("--captioner", default="auto", help="multitask: decoder preset (auto: the one made for --model)")
    p.add_argument("--itc-weight", type=float, default=1.0, help="multitask: weight of the contrastive loss")
    p.add_argument("--caption-weight", type=float, default=1.0, help="multitask: weight of the captioning loss")
    p.add_argument("--momentum", type=float, default=0.995, help="multitask: EMA momentum of the momentum encoders")
    p.add_argument("--queue-size", type=int, default=1024, help="multitask: momentum features kept as extra negatives")
    p.add_argument("--alpha", type=float, default=0.4, help="multitask: weight of the momentum soft targets")
    p.add_argument("--heldout-taxa", type=float, default=0.1, help="share of taxa kept out for evaluation")
    p.add_argument("--heldout-specimens", type=float, default=0.1, help="share of the other sheets kept out")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present; several GPUs via `accelerate launch`)")
    p.add_argument("--workers", type=int, help="image decoding processes (default: automatic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start again instead of resuming from the checkpoint")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (default: each epoch)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (a later run resumes)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_finetune)


_REGISTRARS.append(_register_finetune)


# --------------------------------------------------------------------------- flora descriptions


def _cmd_descriptions_add(args: argparse.Namespace) -> int:
    from retrieval.descriptions import add_descriptions

    summary = add_descriptions(args.collection, args.source, text_model=args.text_model, device=args.device,
                               rebuild=args.rebuild, progress=not (args.json or args.quiet), wait=args.wait)
    if args.json:
        _print_json(summary)
        return 0
    for src in summary["sources"]:
        print(f"{src['source']}: {src['taxa']} taxa ({', '.join(src['languages'])})")
    print(f"{summary['taxa']} described taxa ({summary['added']} new, {summary['replaced']} replaced), "
          f"{summary['traits']} traits, {summary['chunks']} sentences embedded with {summary['text_model']}; "
          f"{summary['linked_taxa']} taxa linked to {summary['linked_specimens']} specimens; {summary['seconds']} s")
    return 0


def _cmd_descriptions_search(args: argparse.Namespace) -> int:
    from retrieval.descriptions import search_descriptions

    results = search_descriptions(args.collection, args.query, k=args.k, signals=args.signals.split(","), lang=args.lang)
    if args.json:
        _print_json(results)
        return 0
    if not results:
        print("no matching taxa")
    for rank, r in enumerate(results, 1):
        ranks = ", ".join(f"{k} {v}" for k, v in r["ranks"].items() if v)
        print(f"{rank}. {r['taxon']} ({r['family']}; {r['source']}) [{ranks}] {len(r['specimen_ids'])} specimens")
        for ev in r["evidence"][:2]:
            print(f"     {'-' if not ev['supports'] else '+'} {ev['highlighted']}")
    return 0


def _register_descriptions(sub: Any) -> None:
    p = sub.add_parser("descriptions", help="flora descriptions: add them to a collection, search them")
    dsub = p.add_subparsers(dest="descriptions_command", required=True, metavar="ACTION")
    a = dsub.add_parser("add", help="read FlorML, Darwin Core or CSV descriptions, extract traits, index, link to specimens")
    a.add_argument("collection")
    a.add_argument("source", nargs="+", help="FlorML .xml (or a folder of them), DwC description file/folder/archive, or CSV taxon,text")
    a.add_argument("--text-model", default="minilm", help="text encoder preset: minilm (default), multilingual, tiny-test")
    a.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    a.add_argument("--rebuild", action="store_true", help="re-embed everything (needed to change --text-model)")
    _add_wait_option(a)
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.set_defaults(handler=_cmd_descriptions_add)
    q = dsub.add_parser("search", help="morphology search over the descriptions only (BM25 + dense + traits)")
    q.add_argument("collection")
    q.add_argument("query", help='e.g. "opposite serrate leaves and white flowers"')
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--signals", default="bm25,dense,traits", help="comma-separated subset of bm25,dense,traits")
    q.add_argument("--lang", choices=("en", "fr"), help="query language (default: guessed)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_cmd_descriptions_search)


def _cmd_traits(args: argparse.Namespace) -> int:
    from retrieval.descriptions import traits_of
    from retrieval.traits import triple

    result = traits_of(args.text, collection=args.collection, lang=args.lang)
    if args.json:
        _print_json(result)
        return 0
    if "taxon" in result:
        print(f"{result['taxon']} ({result['source']})")
    if not result["traits"]:
        print("no traits found")
    for t in result["traits"]:
        organ, character, value = triple(t)
        print(f"({organ}, {character}, {value})")
    return 0


def _register_traits(sub: Any) -> None:
    p = sub.add_parser("traits", help="print (organ, character, value) triples of a description text or a described taxon")
    p.add_argument("text", metavar="TEXT_OR_TAXON", help='description text, or a taxon name with --collection')
    p.add_argument("--collection", help="look the taxon up in this collection's descriptions")
    p.add_argument("--lang", choices=("en", "fr"), help="text language (default: guessed)")
    p.add_argument("--json", action="store_true", help="print the traits as JSON (with spans and sentences)")
    p.set_defaults(handler=_cmd_traits)


_REGISTRARS += [_register_descriptions, _register_traits]



def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse binds an optional positional before the options that follow it, so
        # `ask COL --image P "question"` leaves the question over: give it to the command's text.
        slot = getattr(args, "trailing_text", None)
        if extra and slot and not getattr(args, slot) and not any(e.startswith("-") for e in extra):
            setattr(args, slot, " ".join(extra))
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # argparse already printed its message
        return 2 if exit_.code not in (0, None) else 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("herbaria: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        code = 2 if isinstance(err, (BadInput, FileNotFoundError)) else 1
        prefix = "error" if isinstance(err, HerbariaError) else type(err).__name__
        print(f"herbaria: {prefix}: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
