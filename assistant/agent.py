"""The assistant: one chat turn = route, run tools, compose a grounded answer, stream it.

The web demo and `herbaria ask` use only this module's contract (TurnResult,
HerbariaAssistant). Everything heavy is loaded once in the constructor; a turn only
encodes its query (an uploaded image once, shared by search, identification and
captioning) and searches. Conversation state is a small JSON dict the caller keeps
and passes back, so the server holds no per-user memory and follow-ups ("only
Rubiaceae", "more like the second one") re-run the last search deterministically.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from langchain_core.language_models import BaseChatModel
from PIL import Image

from assistant import geography
from assistant.chat import load_chat_model, stream_chat, strip_ungrounded
from assistant.composer import Evidence, citation, compose, help_text, relevance, stream_text
from assistant.resources import MAX_K, Resources
from assistant.router import DEFAULT_K, Plan, route_turn
from assistant.tools import Turn, make_tools
from retrieval.errors import BadInput
from retrieval.filters import Filters, parse_filters
from retrieval.collections import load_image
from retrieval.collections import DWC_TERMS

log = logging.getLogger(__name__)

STATE_VERSION = 1
_RERUNNABLE = {"search_specimens": {"query", "taxon", "collector", "locality"}, "find_similar": {"specimen_id", "text"}}


@dataclass
class TurnResult:
    text: str                      # the composed answer (markdown), grounded
    route: str                     # help | search | morphology | taxon | image | image_question | followup
    specimens: list[dict[str, Any]]  # gallery items: search result dicts (rank, score, specimen_id, image, ...)
    caption: dict[str, Any] | None  # output of the captioner (text, organs, taxa, ...)
    taxa: list[dict[str, Any]]     # description / identification hits: kind, taxon, score, evidence, specimen_ids
    state: dict[str, Any] = field(default_factory=dict)   # JSON-serialisable state for follow-ups
    notices: list[str] = field(default_factory=list)      # what to read before trusting it (e.g. a test encoder)
    map: dict[str, Any] | None = None  # "where does X grow?": the range map drawn (path, label, records_drawn, ...)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


@dataclass
class _Run:
    """What the tools produced for a turn."""

    evidence: Evidence
    messages: list[tuple[str, str]]       # (tool name, text content) for a language model
    last: dict[str, Any] | None           # the re-runnable search, for follow-ups


class HerbariaAssistant:
    """Grounded chat over one collection; thread-safe (turns share only the loaded, read-mostly resources)."""

    def __init__(self, collection: str | Path, *, model: str | None = None, captioner: str = "grounded",
                 chat_model: str | BaseChatModel | None = None, device: str | None = None, k: int = DEFAULT_K,
                 lazy: bool = False) -> None:
        self.res = Resources(collection, model=model, device=device, captioner=captioner, lazy=lazy)
        self.tools = make_tools(self.res)
        self.chat = load_chat_model(chat_model)
        self.k = max(1, min(int(k), MAX_K))

    # ------------------------------------------------------------------ the contract
    def stream(self, text: str, image: str | Path | Image.Image | None = None, *, filters: dict[str, Any] | None = None,
               state: dict[str, Any] | None = None) -> Iterator[str | TurnResult]:
        """Answer text deltas, then exactly one TurnResult."""
        self.res.refresh()  # a collection, index or descriptions committed since the last turn
        prior = self._clean_state(state)
        geo = geography.read_question(text)  # radius/box filters, a typed point, "where does X grow?"
        ui = parse_filters(filters)
        plan = route_turn(geography.route_text(geo, text, has_image=image is not None), has_image=image is not None,
                          state=prior, vocab=self.res.vocab, k=self.k)
        plan = replace(plan, filters={**plan.filters, **geo.filters})  # said in the question: kept for follow-ups
        turn = Turn()
        if image is not None:
            picture = (image.convert("RGB") if isinstance(image, Image.Image)
                       else load_image(image, reduce_to=2 * self.res.encoder.image_size))
            turn = Turn(image=picture, encoded=self.res.encode_image(picture))
        run = self._run(plan, turn, ui, prior, text or "")
        range_map = geography.after_run(self.res.collection, geo, run.evidence, geography.exif_point(image))
        answer = help_text(self.info(), plan.lang) if plan.route == "help" else compose(run.evidence)
        if self.chat is not None and plan.route != "help":
            pieces = []
            for piece in stream_chat(self.chat, text or "", run.messages, specimens=run.evidence.specimens, fallback=answer):
                pieces.append(piece)
                yield piece
            answer = strip_ungrounded("".join(pieces), run.evidence.specimens)
        else:
            yield from stream_text(answer)
        yield TurnResult(text=answer, route=plan.route, specimens=run.evidence.specimens, caption=run.evidence.caption,
                         taxa=[_public_taxon(t) for t in run.evidence.taxa], state=self._next_state(run, prior, ui),
                         notices=self.res.notices(), map=range_map)

    def ask(self, text: str, image: str | Path | Image.Image | None = None, *, filters: dict[str, Any] | None = None,
            state: dict[str, Any] | None = None) -> TurnResult:
        result = None
        for item in self.stream(text, image, filters=filters, state=state):
            if isinstance(item, TurnResult):
                result = item
        assert result is not None
        return result

    def info(self) -> dict[str, Any]:
        return {"collection": self.res.name, "specimens": len(self.res.table), "indexed": len(self.res.index),
                "encoder": self.res.encoder.name, "captioner": self.res.captioner_name,
                "taxa_described": self.res.descriptions_count(), "chat_model": _model_name(self.chat),
                "notices": self.res.notices()}

    def specimen(self, specimen_id: int) -> dict[str, Any]:
        """Every stored field of one specimen, its image (path or URL), source link and citation."""
        record = self.res.record(int(specimen_id))
        row = self.res.row(int(specimen_id))
        full = {term: _clean(row.get(term)) for term in DWC_TERMS}
        return {**full, **record, "imageUrl": _clean(row.get("imageUrl")), "citation": citation(record)}

    def filter_choices(self) -> dict[str, Any]:
        return self.res.filter_choices()

    # ------------------------------------------------------------------ running tools
    def _call(self, tool: str, turn: Turn, /, **args: Any) -> tuple[str, Any]:
        call = {"type": "tool_call", "id": f"{tool}-1", "name": tool, "args": {k: v for k, v in args.items() if v is not None}}
        message = self.tools[tool].invoke(call, config={"configurable": {"turn": turn}})
        return str(message.content), message.artifact

    def _run(self, plan: Plan, turn: Turn, ui: Filters, prior: dict[str, Any], question: str) -> _Run:
        ev = Evidence(route=plan.route, question=question, query=plan.query, taxon=plan.taxon, organ=plan.organ, lang=plan.lang)
        msgs: list[tuple[str, str]] = []
        last: dict[str, Any] | None = None
        if plan.route == "help":
            return _Run(ev, msgs, None)
        if plan.route in ("image", "image_question"):
            ev.filters = {**ui, **plan.filters}
            ev.basis = "image"
            content, art = self._call("find_similar", turn, text=plan.query or None, k=plan.k, **_filter_args(ev.filters))
            msgs.append(("find_similar", content))
            ev.specimens, ev.below_floor = art["specimens"], art["below_floor"]
            turn.gallery = ev.specimens  # the description is built from exactly the sheets the gallery shows
            self._caption(turn, ev, msgs)
            if plan.identify or plan.route == "image":
                content, hits = self._call("identify", turn, rank=plan.identify or "species")
                msgs.append(("identify", content))
                ev.taxa += hits
            last = {"tool": "find_similar", "args": {"text": plan.query} if plan.query else {}, "said": plan.filters,
                    "k": plan.k, "vector": turn.image_vector()}  # the image alone: a re-run adds the text again
        elif plan.route == "specimen":
            last = self._lookup(plan, ev)
        elif plan.route == "followup":
            last = self._followup(plan, turn, ui, prior, ev, msgs)
        elif plan.route == "taxon":
            last = self._taxon(plan, turn, ui, ev, msgs)
        else:  # search, morphology
            ev.filters = {**ui, **plan.filters}
            ev.basis = "text" if plan.query else "browse"
            described: list[dict[str, Any]] = []
            if plan.route == "morphology" and self.res.descriptions is not None:
                content, described = self._call("search_descriptions", turn, query=plan.query, k=3,
                                                **_filter_args(ev.filters, taxa=False))
                msgs.append(("search_descriptions", content))
                ev.taxa += described
            people = {"collector": plan.collector, "locality": plan.locality}
            content, art = self._call("search_specimens", turn, query=plan.query, k=plan.k, **people,
                                      **_filter_args(ev.filters))
            msgs.append(("search_specimens", content))
            ev.notes += self._lacking(plan)
            if plan.suggestion:  # "from Frnace" searched as words: say what the collection holds
                ev.notes.append(f"Searched the words as written; did you mean {plan.suggestion}?")
            linked = [dict(r, via="description") for h in described for r in h.get("specimens", [])[:2]]
            ev.specimens = _merge(linked, [dict(r, via="image") for r in art["specimens"]], plan.k)
            ev.below_floor = art["below_floor"]
            last = {"tool": "search_specimens", "args": {"query": plan.query, **{k: v for k, v in people.items() if v}},
                    "said": plan.filters, "k": plan.k}
        for rec in ev.specimens:  # the gallery shows the same words as the answer
            rec["relevance"] = relevance(rec.get("score"), ev.basis, ev.lang)
        return _Run(ev, msgs, last)

    def _lookup(self, plan: Plan, ev: Evidence) -> dict[str, Any]:
        """One specimen by its catalog number or occurrenceID; a clear line when none or several match."""
        ident = plan.catalog or ""
        ids = self.res.find_specimens(ident)
        if not ids:
            raise BadInput(f"no specimen with catalog number or occurrenceID {ident!r} in this collection")
        if len(ids) > 1:
            held = sorted({citation(self.res.record(i)) for i in ids})
            raise BadInput(f"{len(ids)} specimens have catalog number {ident!r} ({', '.join(held)}): say which, "
                           f"e.g. {held[0].strip('[]')!r}")
        ev.basis, ev.specimens = "lookup", [{**self.specimen(ids[0]), "rank": 1}]
        return {"tool": "find_similar", "args": {"specimen_id": ids[0]}, "said": {}, "k": plan.k}

    def _lacking(self, plan: Plan) -> list[str]:
        """A line for each field the question filters on that this collection does not record."""
        out = []
        for column, value, what in (("recordedBy", plan.collector, "collector"), ("locality", plan.locality, "locality")):
            if value and not self.res.has_field(column):
                out.append(f"This collection records no {what} ({column}), so '{value}' cannot be matched.")
        return out

    def _caption(self, turn: Turn, ev: Evidence, msgs: list[tuple[str, str]]) -> None:
        if self.res.captioner_name is None:
            return
        content, caption = self._call("caption_image", turn)
        msgs.append(("caption_image", content))
        ev.caption = caption

    def _taxon(self, plan: Plan, turn: Turn, ui: Filters, ev: Evidence, msgs: list[tuple[str, str]]) -> dict[str, Any]:
        taxon = plan.taxon or plan.query
        ev.filters = {**ui, **plan.filters}
        if plan.suggestion:
            ev.notes.append(f"{taxon} is not in this collection; did you mean {plan.suggestion}?")
        content, hit = self._call("describe_taxon", turn, name=taxon, organ=plan.organ)
        msgs.append(("describe_taxon", content))
        ev.taxa.append({**hit, "kind": "taxon"})
        held = bool(self.res.taxon_ids(taxon, plan.taxon_kind))
        ev.held, ev.basis = held, "taxon" if held else "text"
        ev.query = f"a herbarium specimen of {taxon}"
        content, art = self._call("search_specimens", turn, query=ev.query, taxon=taxon if held else None, k=plan.k,
                                  **_filter_args(ev.filters))
        msgs.append(("search_specimens", content))
        ev.specimens, ev.below_floor = art["specimens"], art["below_floor"]
        return {"tool": "search_specimens", "args": {"query": ev.query, **({"taxon": taxon} if held else {})},
                "said": plan.filters, "k": plan.k}

    def _followup(self, plan: Plan, turn: Turn, ui: Filters, prior: dict[str, Any], ev: Evidence,
                  msgs: list[tuple[str, str]]) -> dict[str, Any]:
        last = prior.get("last")
        if not last:
            raise BadInput("there are no earlier results to refer to; ask a question or upload an image first")
        if plan.action == "like":
            seed = self._seed(plan, prior)
            said = {**last["said"], **plan.filters}  # the conversation's filters still hold
            ev.filters, ev.basis, ev.like = {**ui, **said}, "like", citation(self.res.record(seed))
            content, art = self._call("find_similar", turn, specimen_id=seed, k=plan.k, **_filter_args(ev.filters))
            msgs.append(("find_similar", content))
            ev.specimens, ev.below_floor = art["specimens"], art["below_floor"]
            return {"tool": "find_similar", "args": {"specimen_id": seed}, "said": said, "k": plan.k}
        said = {"refine": {**last["said"], **plan.filters}, "clear": {}}.get(plan.action, last["said"])
        k = min(last["k"] + self.k, MAX_K) if plan.action == "more" else last["k"]
        ev.filters = {**ui, **said}
        args = dict(last["args"])
        if last["tool"] == "find_similar" and "specimen_id" not in args:
            turn = Turn(vector=last.get("vector"))
            ev.basis = "image"
        elif "specimen_id" in args:
            ev.basis, ev.like = "like", citation(self.res.record(args["specimen_id"]))
        else:
            ev.query, ev.taxon = args.get("query", ""), args.get("taxon")
            ev.basis = "taxon" if ev.taxon else ("text" if ev.query else "browse")
        content, art = self._call(last["tool"], turn, k=k, **args, **_filter_args(ev.filters))
        msgs.append((last["tool"], content))
        ev.specimens, ev.below_floor = art["specimens"], art["below_floor"]
        return {**last, "said": said, "k": k}

    def _seed(self, plan: Plan, prior: dict[str, Any]) -> int:
        shown: list[int] = prior.get("specimens", [])
        if plan.like_rank is not None:
            if not shown:
                raise BadInput("the last answer showed no specimens to compare with")
            if plan.like_rank == 0 or abs(plan.like_rank) > len(shown):
                raise BadInput(f"there is no result number {plan.like_rank}; the last answer showed {len(shown)}")
            return shown[plan.like_rank - 1 if plan.like_rank > 0 else plan.like_rank]
        catalog = (plan.like_catalog or "").strip()
        for sid in shown:
            rec = self.res.record(sid)
            if catalog in (str(rec.get("catalogNumber") or ""), citation(rec).strip("[]")):
                return sid
        found = self.res.find_catalog(catalog)
        if found is None:
            raise BadInput(f"no specimen with catalog number {catalog} in this collection")
        return found

    # ------------------------------------------------------------------ state
    def _next_state(self, run: _Run, prior: dict[str, Any], ui: Filters) -> dict[str, Any]:
        if run.last is None:  # a turn with no search (help) leaves the conversation where it was
            return _dump_state(prior["last"], prior["specimens"], ui) if prior else {}
        return _dump_state(run.last, [int(r["specimen_id"]) for r in run.evidence.specimens], ui)

    def _clean_state(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """State comes back from the client: accept only what we wrote, never a path or an arbitrary call."""
        if not state:
            return {}
        try:
            return _validate_state(state, dim=self.res.encoder.dim)
        except (BadInput, KeyError, TypeError, ValueError) as err:
            log.warning("ignoring malformed conversation state: %s", err)
            return {}


def _validate_state(state: dict[str, Any], *, dim: int) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("last"), dict):
        raise ValueError("not a Herbaria state")
    last = state["last"]
    tool = last["tool"]
    if tool not in _RERUNNABLE:
        raise ValueError(f"tool {tool!r} is not re-runnable")
    args = dict(last.get("args") or {})
    if set(args) - _RERUNNABLE[tool]:
        raise ValueError("unexpected arguments")
    for name, value in args.items():
        if not isinstance(value, int if name == "specimen_id" else str) or isinstance(value, bool):
            raise TypeError(f"argument {name} has the wrong type")
    k = int(last.get("k", DEFAULT_K))
    clean: dict[str, Any] = {"tool": tool, "args": args, "said": parse_filters(last.get("said") or {}),
                             "k": max(1, min(k, MAX_K))}
    if last.get("vector") is not None:
        vector = np.asarray(last["vector"], dtype=np.float32)
        unit = bool(np.all(np.isfinite(vector))) and math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-3)
        if vector.shape != (dim,) or not unit:
            raise ValueError("stored query vector does not fit this encoder")
        clean["vector"] = vector
    elif tool == "find_similar" and "specimen_id" not in args:
        raise ValueError("image query without its vector")
    specimens = [int(s) for s in state.get("specimens", [])][:MAX_K]
    return {"version": STATE_VERSION, "last": clean, "specimens": specimens}


def _dump_state(last: dict[str, Any], specimens: list[int], ui: Filters) -> dict[str, Any]:
    """The JSON form of the conversation state (what `_validate_state` accepts back)."""
    out = dict(last, said=_json_filters(last["said"]))
    if out.get("vector") is not None:
        out["vector"] = [round(float(x), 6) for x in np.asarray(out["vector"]).ravel()]
    return {"version": STATE_VERSION, "last": out, "specimens": specimens,
            "filters": _json_filters({**ui, **last["said"]})}


def _json_filters(filters: Filters) -> dict[str, Any]:
    return {k: list(v) for k, v in filters.items()}


def _filter_args(filters: Filters, *, taxa: bool = True) -> dict[str, Any]:
    """parse_filters' dict as tool arguments."""
    names = {"family": "family", "country": "country", "institutionCode": "institution", "genus": "genus",
             "scientificName": "species"}
    args: dict[str, Any] = {}
    for column, value in filters.items():
        if column == "year":
            args["year_from"], args["year_to"] = value
        elif column in names and (taxa or column not in ("genus", "scientificName")):
            args[names[column]] = list(value)
        elif column in ("radius", "bbox"):  # (lat, lon, km) / (west, south, east, north), applied inside the search
            args[column] = [float(v) for v in value]
    return args


def _merge(first: list[dict[str, Any]], second: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The first list's specimens are kept, then the second's, up to k; shown in one order, by score (both lists
    score the same query against the same index), so a rank never sits above a closer match."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for rec in first + second:
        if rec["specimen_id"] not in seen and len(out) < k:
            seen.add(rec["specimen_id"])
            out.append(rec)
    out.sort(key=lambda r: -float(r.get("score", 0.0)))  # stable: ties keep the description-linked first
    return [{**rec, "rank": i} for i, rec in enumerate(out, start=1)]


def _public_taxon(hit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hit.items() if k != "specimens"}


def _clean(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    try:
        if value is None or pd.isna(value):
            return None
    except (TypeError, ValueError):  # lists and other non-scalars are kept as they are
        pass
    return value


def _model_name(model: BaseChatModel | None) -> str | None:
    if model is None:
        return None
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__
