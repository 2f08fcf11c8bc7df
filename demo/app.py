"""The Gradio app: a multimodal chat beside a specimen gallery, a trait panel and a specimen view.

Everything a visitor sends passes through `demo.uploads` first, and everything
shown comes out of one `HerbariaAssistant`: the app only lays results out. Errors
the user can act on (`HerbariaError`) are shown as they are; anything else is a
bug: logged with its traceback, shown as one generic line, never as a trace.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from demo.gallery import (  # noqa: E402
    ImageStore,
    field_rows,
    gallery_items,
    is_url,
    md_escape,
    md_link,
    public_record,
)
from demo.gate import VISITOR_HEADER  # noqa: E402
from demo.specimen_page import (  # noqa: E402
    SpecimenNames,
    citation_text,
    fields_html,
    map_png,
    permalink,
    points_of,
    viewer_html,
)
from demo.uploads import (  # noqa: E402
    UploadLimits,
    UploadRegistry,
    check_question,
    check_upload,
    public_message,
)
from assistant.composer import specimen_label  # noqa: E402
from assistant.geography import publish_map  # noqa: E402
from retrieval.errors import BadInput, HerbariaError  # noqa: E402

log = logging.getLogger("herbaria.demo")

CHAT_API = "chat"
SPECIMEN_API = "specimen"
GENERIC_ERROR = "Something went wrong on our side while answering (it has been logged). Please try again, or rephrase."

CSS = """
#herbaria-gallery .thumbnail-item { aspect-ratio: 2 / 3 !important; display: flex; flex-direction: column; }
#herbaria-gallery .thumbnail-item img { flex: 1 1 auto; min-height: 0; height: auto !important;
  object-fit: contain !important; }
#herbaria-gallery .caption-label { position: static !important; transform: none !important; white-space: normal !important;
  overflow: visible !important; max-width: 100% !important; text-overflow: clip !important; margin: 0 !important;
  font-size: 0.78rem; line-height: 1.25; padding: 4px 6px; border-radius: 0 !important; text-align: left; }
#herbaria-header h2 { margin-bottom: 0.1rem; }
#herbaria-header p { margin-top: 0; }
#herbaria-chat .user img, #herbaria-chat .user video { min-width: 160px; max-width: min(100%, 320px) !important;
  max-height: 360px !important; height: auto !important; width: auto !important; object-fit: contain !important; }
#herbaria-chat .user .file-preview-holder, #herbaria-chat .user .image-container { min-width: 160px; }
#herbaria-fields table.herbaria-label { width: 100%; border-collapse: collapse; font-size: 0.92rem; }
#herbaria-fields table.herbaria-label th { text-align: left; vertical-align: top; white-space: nowrap;
  word-break: keep-all; padding: 3px 12px 3px 0; color: #555; font-weight: 600; width: 1%; }
#herbaria-fields table.herbaria-label td { padding: 3px 0; overflow-wrap: anywhere; }
#herbaria-fields table.herbaria-label tr { border-bottom: 1px solid #eee; }
@media (max-width: 640px) {
  #herbaria-gallery .grid-wrap .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #herbaria-fields table.herbaria-label th { white-space: normal; width: 35%; }
}
"""

# Runs in the browser as the page loads: on a narrow screen with a permalink, wait for the specimen's label
# fields to appear, then scroll its page into view (it sits below the chat there).
SCROLL_TO_SPECIMEN = """() => {
  if (!new URLSearchParams(location.search).has('specimen') || window.innerWidth >= 900) return;
  const start = Date.now();
  const look = () => {
    if (document.querySelector('#herbaria-fields table')) {
      document.querySelector('#herbaria-specimen-header')?.scrollIntoView({block: 'start'});
    } else if (Date.now() - start < 30000) { setTimeout(look, 200); }
  };
  look();
}"""


def link_citations(text: str, specimens: list[dict[str, Any]]) -> str:
    """Each cited specimen ([HUH 17348]) made a link to its page (the permalink); other brackets stay text."""
    links = {f"[{specimen_label(s)}]": permalink(s) for s in specimens if s.get("specimen_id") is not None}
    if not links:
        return text
    pattern = re.compile("(" + "|".join(re.escape(c) for c in sorted(links, key=len, reverse=True)) + r")(?!\()")
    # "[\\[HUH 17348\\]](?specimen=…)": the link still reads as the bracketed citation
    return pattern.sub(lambda m: f"[\\{m.group(1)[:-1]}\\]]({links[m.group(1)]})", text)


def _skip(n: int) -> list[Any]:
    return [gr.skip() for _ in range(n)]


def _deep_public(value: Any) -> Any:
    """JSON for API clients with any absolute server path cut to its file name."""
    if isinstance(value, str):
        return value if is_url(value) else public_message(value)
    if isinstance(value, dict):
        return {k: _deep_public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_public(v) for v in value]
    return value


def _trait_phrase(trait: dict[str, Any]) -> str:
    value = ("not " if trait.get("negated") else "") + str(trait.get("value") or "")
    phrase = f"{trait.get('character') or ''} {value}".strip()
    if trait.get("count") is not None and trait.get("of"):
        phrase += f" ({trait['count']}/{trait['of']})"
    return phrase


def caption_markdown(caption: dict[str, Any] | None) -> str:
    """The captioner's trait description: its text, each organ's traits with how many similar specimens agree,
    and (for a neural captioner) the traits no similar specimen supports."""
    if not caption:
        return ""
    lines = ["#### Trait description"]
    if caption.get("lines"):  # the grounded captioner's organ lines: the description once, no second list
        lines += [f"- {md_escape(line)}" for line in caption["lines"]]
        lines += [md_escape(t) for t in str(caption.get("text") or "").splitlines() if t.startswith("Candidate taxa")]
    elif caption.get("text"):
        lines.append(md_escape(caption["text"]))
    rows = []
    for organ in [] if caption.get("lines") else caption.get("organs") or []:
        if not isinstance(organ, dict):
            continue
        name = organ.get("label") or organ.get("organ") or ""
        traits = [_trait_phrase(t) for t in organ.get("traits") or [] if isinstance(t, dict)]
        if not traits and (organ.get("text") or organ.get("phrase")):
            traits = [str(organ.get("text") or organ.get("phrase"))]
        support = organ.get("support")
        if isinstance(support, (int, float)):
            traits = [f"{t} ({support:.2f})" for t in traits]
        if name and traits:
            rows.append(f"- **{md_escape(name)}**: {md_escape('; '.join(traits))}")
    if rows:
        lines += ["", *rows]
    unsupported = [u for u in caption.get("unsupported") or [] if isinstance(u, dict)]
    if unsupported:
        shown = "; ".join(f"{u.get('organ', '')} {_trait_phrase(u)}".strip() for u in unsupported[:6])
        lines += ["", f"Not supported by any similar specimen: {md_escape(shown)}"]
    kind = caption.get("captioner") or caption.get("kind")
    if kind:
        lines += ["", f"<sub>{md_escape(kind)} captioner; (n/k) = similar specimens that share the trait</sub>"]
    return "\n".join(lines)


def taxa_markdown(taxa: list[dict[str, Any]] | None) -> str:
    """Taxa the turn found (by description or identification), each with its quoted evidence."""
    if not taxa:
        return ""
    lines = ["#### Taxa"]
    for taxon in taxa[:5]:
        name = md_escape(taxon.get("taxon") or taxon.get("name") or "")
        score = taxon.get("score")
        score_text = f" ({score:.2f})" if isinstance(score, (int, float)) else ""
        lines.append(f"- *{name}*{score_text}")
        for sentence in (taxon.get("evidence") or [])[:2]:
            text = sentence.get("text") if isinstance(sentence, dict) else sentence
            if text:
                lines.append(f"  > {md_escape(text)}")
    return "\n".join(lines)


def filters_from(family: Any, country: Any, institution: Any, year_from: Any, year_to: Any,
                 span: tuple[int | None, int | None] = (None, None)) -> dict[str, Any]:
    """The filter controls as the assistant's filters dict (empty controls are left out).

    The year boxes start at the collection's span (`span`); a year of 0, an empty
    box, or one at the span's end means no limit on that side, so the default
    filters nothing, not even specimens without a year.
    """

    def values(v: Any) -> list[str]:
        items = v if isinstance(v, (list, tuple)) else [v]
        return [str(i) for i in items if i not in (None, "")]

    def year(v: Any) -> int | None:
        if v in (None, ""):
            return None
        try:
            value = int(float(v))
        except (TypeError, ValueError):
            raise BadInput(f"year {v!r} is not a number") from None
        return value or None

    filters: dict[str, Any] = {}
    for key, value in (("family", family), ("country", country), ("institution", institution)):
        if values(value):
            filters[key] = values(value)
    lo, hi = year(year_from), year(year_to)
    if lo is not None and hi is not None and lo > hi:
        raise BadInput(f"The year range {lo}–{hi} ends before it starts.")
    if lo is not None and span[0] is not None and lo <= span[0]:
        lo = None
    if hi is not None and span[1] is not None and hi >= span[1]:
        hi = None
    if lo is not None or hi is not None:
        filters["year"] = (lo, hi)
    return filters


def visitor_of(request: Any) -> str | None:
    """The visitor id `demo.gate` put on the request (never one a client sent), else None.

    ChatInterface calls its function without the request, so Gradio's context gives it then.
    """
    if request is None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None) or {}
    try:
        return headers.get(VISITOR_HEADER) or None
    except AttributeError:
        return None


def _message_parts(message: Any) -> tuple[str, list[Any]]:
    if isinstance(message, dict):
        return str(message.get("text") or ""), list(message.get("files") or [])
    return str(message or ""), []


class DemoHandlers:
    """The app's event functions, bound to one assistant and one collection."""

    def __init__(self, assistant: Any, store: ImageStore, limits: UploadLimits,
                 years: tuple[int | None, int | None] = (None, None), uploads: UploadRegistry | None = None,
                 names: SpecimenNames | None = None, collection_name: str = "") -> None:
        self.assistant = assistant
        self.store = store
        self.limits = limits
        self.years = years
        self.uploads = uploads or UploadRegistry()
        self.names = names
        self.collection = collection_name

    def resolve(self, query: Any) -> int:
        """A specimen id from what a visitor typed: label, catalog number, occurrenceID, "#id" (BadInput if none)."""
        if self.names is not None:
            return self.names.resolve(query)
        try:
            return int(float(query))
        except (TypeError, ValueError):
            raise BadInput(f"There is no specimen {query} in this collection.") from None

    def results_map(self, specimens: list[dict[str, Any]]) -> str | None:
        """A map of where the result set was collected (None when no result has coordinates)."""
        points = points_of(specimens)
        try:
            return map_png(points, self.store.cache, f"{len(points)} of {len(specimens)} specimens with coordinates")
        except Exception:  # a map is an extra: the answer stands without it
            log.exception("results map failed")
            return None

    # ------------------------------------------------------------------ chat
    def respond(self, message: Any, history: list[Any], family: Any, country: Any, institution: Any,
                year_from: Any, year_to: Any, conversation: dict[str, Any] | None,
                request: gr.Request | None = None) -> Iterator[tuple[Any, ...]]:
        """Stream the answer text, then the gallery, results map, trait description, taxa, state and the turn
        as JSON. Each cited specimen in the final answer links to its page."""
        yield from self._turn(message, family, country, institution, year_from, year_to, conversation, request,
                              link=True)

    def _turn(self, message: Any, family: Any, country: Any, institution: Any, year_from: Any, year_to: Any,
              conversation: dict[str, Any] | None, request: Any, *, link: bool) -> Iterator[tuple[Any, ...]]:
        n_extra = 7
        try:
            text, files = _message_parts(message)
            question = check_question(text, self.limits)
            image = check_upload(files, self.limits, self.uploads, visitor_of(request))
            if not question and image is None:
                raise BadInput("Type a question, or attach a photo of a specimen (or both).")
            filters = filters_from(family, country, institution, year_from, year_to, self.years)
            answer, result = "", None
            for item in self.assistant.stream(question, str(image) if image else None,
                                              filters=filters or None, state=conversation or None):
                if isinstance(item, str):
                    answer += item
                    yield (answer, *_skip(n_extra))
                else:
                    result = item
            if result is None:
                raise RuntimeError("the assistant ended a turn without a result")
            items, ids = gallery_items(result.specimens, self.store)
            records = [public_record(s, self.store) for s in result.specimens]
            public = _deep_public({**result.to_dict(), "specimens": records})
            public.pop("state", None)
            public["error"] = None
            text = link_citations(result.text, result.specimens) if link else result.text
            where = publish_map(result.map["path"], self.store.cache) if result.map else None  # "where does X grow?"
            yield (text, items, where or self.results_map(result.specimens),
                   caption_markdown(result.caption), taxa_markdown(result.taxa), result.state, ids, public)
        except HerbariaError as err:
            shown = public_message(str(err))
            log.info("turn refused: %s", shown)
            yield (f"⚠️ {shown}", *_skip(n_extra - 1), {"error": shown, "text": f"⚠️ {shown}", "specimens": []})
        except Exception:
            log.exception("chat turn failed")
            yield (f"⚠️ {GENERIC_ERROR}", *_skip(n_extra - 1), {"error": GENERIC_ERROR,
                                                                "text": f"⚠️ {GENERIC_ERROR}",
                                                        "specimens": []})

    def respond_api(self, message: Any, family: Any, country: Any, institution: Any, year_from: Any, year_to: Any,
                    conversation: dict[str, Any] | None,
                    request: gr.Request | None = None) -> Iterator[tuple[Any, ...]]:
        """The `/chat` API: the chat turn without the chat history component, nor the page's results map and
        links (an API client gets the plain citations and the specimens in the turn's JSON)."""
        for out in self._turn(message, family, country, institution, year_from, year_to, conversation, request,
                              link=False):
            yield (out[0], out[1], *out[3:])

    # ------------------------------------------------------------------ specimen view
    def _record(self, query: Any) -> tuple[int, dict[str, Any]]:
        if query in (None, ""):
            raise BadInput("Choose a specimen in the gallery, or type its catalog number (e.g. HUH 17348).")
        sid = self.resolve(query)
        try:
            return sid, self.assistant.specimen(sid)
        except (KeyError, LookupError):
            raise BadInput(f"There is no specimen {sid} in this collection.") from None

    def specimen(self, specimen_id: Any) -> tuple[Any, ...]:
        """The `/specimen` API: header with the source link, the image, the Darwin Core table, and the record
        as JSON; the specimen named by its label, catalog number, occurrenceID or id."""
        try:
            _, record = self._record(specimen_id)
            name = md_escape(record.get("scientificName") or "Unnamed specimen")
            catalog = md_escape(specimen_label(record))
            lines = [f"### *{name}*", catalog]
            lines.append("Source record: " + (md_link(str(record["references"]), record["references"])
                                              if record.get("references") else "not given by the source"))
            rights = " · ".join(md_escape(record.get(k)) for k in ("license", "rightsHolder") if record.get(k))
            if rights:
                lines.append(f"Image and data: {rights}")
            image = self.store.full(record.get("image"))
            return ("\n\n".join(line for line in lines if line), image, field_rows(record),
                    _deep_public(public_record(record, self.store)))
        except HerbariaError as err:
            shown = public_message(str(err))
            return f"⚠️ {md_escape(shown)}", None, [], {"error": shown}
        except Exception:
            log.exception("specimen view failed")
            return f"⚠️ {GENERIC_ERROR}", None, [], {"error": GENERIC_ERROR}

    def page(self, query: Any) -> tuple[Any, ...]:
        """The specimen page: the box's new value (the label), header (name, label, permalink, source), the
        deep-zoom sheet, the label fields with taxonomy and downloads, the locality map, a citation to copy,
        and the record as JSON."""
        try:
            sid, record = self._record(query)
            label = specimen_label(record)
            name = md_escape(record.get("scientificName") or "Unnamed specimen")
            link = permalink(record)
            lines = [f"### *{name}*", f"**{md_escape(label)}** · [permalink]({link})"]
            if record.get("references"):
                lines[-1] += " · " + md_link("source record", record["references"])
            has_image = self.store.local(record.get("image")) is not None
            viewer = viewer_html(sid) if has_image else "<p>No image of this sheet in the collection.</p>"
            points = points_of([record])
            place = ", ".join(str(record[k]) for k in ("locality", "country") if record.get(k))[:80]
            try:
                locality = map_png(points, self.store.cache, f"{label}: {place}" if place else label)
            except Exception:
                log.exception("specimen map failed")
                locality = None
            return (label, "\n\n".join(lines), viewer, fields_html(record, sid, has_image), locality,
                    citation_text(record, self.collection), _deep_public(public_record(record, self.store)))
        except HerbariaError as err:
            shown = public_message(str(err))
            return gr.skip(), f"⚠️ {md_escape(shown)}", "", "", None, "", {"error": shown}
        except Exception:
            log.exception("specimen page failed")
            return gr.skip(), f"⚠️ {GENERIC_ERROR}", "", "", None, "", {"error": GENERIC_ERROR}

    def select(self, ids: list[int] | None, event: gr.SelectData) -> tuple[Any, ...]:
        """A click on a gallery item opens its page in the specimen tab."""
        index = event.index if isinstance(event.index, int) else (event.index or [0])[0]
        if not ids or not 0 <= index < len(ids):
            return (gr.skip(), *self.page(None))
        return (gr.Tabs(selected="specimen"), *self.page(f"#{ids[index]}"))

    def open_permalink(self, request: gr.Request) -> tuple[Any, ...]:
        """`?specimen=HUH%2017348` (or an occurrenceID, or #id) in the page's URL opens that specimen's page."""
        params = getattr(request, "query_params", None) or {}
        wanted = params.get("specimen") if hasattr(params, "get") else None
        if not wanted:
            return tuple(_skip(8))
        return (gr.Tabs(selected="specimen"), *self.page(str(wanted)[:200]))


# ---------------------------------------------------------------------------- layout


def build_examples(collection_dir: str | Path, store: ImageStore) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Examples made from the collection itself, so that each one has answers in it."""
    from retrieval.collections import Collection

    from demo.sample import read_demo_examples

    table = Collection.open(collection_dir).specimens()
    built = read_demo_examples(collection_dir)  # the demo sample's: from traits its described taxa have
    examples: list[list[dict[str, Any]]] = [[{"text": e["text"], "files": []}] for e in built]
    labels = [e["label"] for e in built]
    if not built:  # any other collection: a morphology question and its most frequent taxon
        examples.append([{"text": "Which specimens have opposite, toothed leaves?", "files": []}])
        labels.append("Morphology: opposite, toothed leaves")
        names = Counter(n for n in table["scientificName"].fillna("").astype(str) if len(n.split()) >= 2)
        if names:
            taxon = " ".join(names.most_common(1)[0][0].split()[:2])
            examples.append([{"text": f"How do the leaves of {taxon} look?", "files": []}])
            labels.append(f"Taxon: leaves of {taxon}")
    with_image = table[table["image"].fillna("").astype(str) != ""]
    if len(with_image):
        row = with_image.iloc[len(with_image) // 2]
        path = store.local(row["image"])
        example_image = store.thumbnail(path, size=768) if path else None
        if example_image:
            examples.append([{"text": "", "files": [example_image]}])
            labels.append("Photo: what is this, and what looks like it?")
            countries = Counter(c for c in table["country"].fillna("").astype(str) if c)
            if countries:
                country = countries.most_common(1)[0][0]
                examples.append([{"text": f"Similar ones from {country}?", "files": [example_image]}])
                labels.append(f"Photo + question: similar ones from {country}")
            else:
                examples.append([{"text": "Which specimens have leaves like this one?", "files": [example_image]}])
                labels.append("Photo + question: leaves like this one")
    return examples, labels


def _choices(choices: dict[str, Any], *keys: str) -> list[str]:
    for key in keys:
        if choices.get(key):
            return sorted({str(v) for v in choices[key] if v not in (None, "")}, key=str.casefold)
    return []


def _year_span(choices: dict[str, Any]) -> tuple[int | None, int | None]:
    for key in ("years", "year", "year_range"):
        span = choices.get(key)
        if isinstance(span, (list, tuple)) and len(span) == 2:
            lo, hi = span
            return (int(lo) if lo is not None else None, int(hi) if hi is not None else None)
    lo, hi = choices.get("min_year"), choices.get("max_year")
    return (int(lo) if lo is not None else None, int(hi) if hi is not None else None)


def description_summary(collection_dir: str | Path, loaded: Any = None) -> dict[str, Any] | None:
    """Description coverage as `herbaria descriptions coverage` computes it, and the description sources
    with their licences; None when the collection has no descriptions (or they cannot be read).

    `loaded`: the assistant's description index, already loaded and linked to the collection's
    specimens (assistant.described.Descriptions); without it the index is opened from disk."""
    from retrieval.collections import Collection
    from retrieval.flora import coverage_of, open_descriptions

    try:
        index = loaded.index if loaded is not None else open_descriptions(collection_dir)
        coverage = coverage_of(index, Collection.open(collection_dir).specimens())
    except HerbariaError as err:
        log.info("no description coverage for the About panel: %s", err)
        return None
    sources = Counter((r.source or "unnamed source", r.licence or "") for r in index.records)
    return {**coverage, "sources": [{"source": s, "licence": lic, "taxa": n}
                                    for (s, lic), n in sorted(sources.items(), key=lambda x: (-x[1], x[0]))]}


def _coverage_rows(summary: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not summary:
        return []
    rows: list[tuple[str, Any]] = [("Description coverage", (
        f"{summary['linked_taxa']} of {summary['taxa']} taxa and {summary['linked_specimens']:,} of "
        f"{summary['specimens']:,} specimens have a description of their taxon"))]
    shown = summary["sources"][:6]
    sources = "; ".join(f"{s['source']} ({s['taxa']} taxa" + (f", licence {s['licence']}" if s["licence"] else "")
                        + ")" for s in shown)
    if len(summary["sources"]) > len(shown):
        sources += f"; and {len(summary['sources']) - len(shown)} more"
    return rows + [("Description sources", sources)]


def about_markdown(info: dict[str, Any], limits: UploadLimits, descriptions: dict[str, Any] | None = None) -> str:
    """The About panel; `descriptions` (description_summary) adds the coverage and the sources with licences."""
    rows = [("Collection", info.get("collection")), ("Specimens", f"{int(info.get('specimens') or 0):,}"),
            ("Image encoder", info.get("encoder")), ("Trait captioner", info.get("captioner")),
            ("Taxa with descriptions", info.get("taxa_described")), *_coverage_rows(descriptions),
            ("Chat model", info.get("chat_model") or "none (deterministic, grounded composer)")]
    table = "\n".join(f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in rows if v not in (None, ""))
    table += "".join(f"\n- **Note**: {md_escape(n)}" for n in info.get("notices") or [])
    return (
        "### About this demo\n\n" + table + "\n\n"
        "Answers are composed only from what was retrieved: every catalog number cited is in the gallery, "
        "and quoted sentences come from the flora descriptions. Each specimen keeps its license and rights "
        "holder (see the Specimen tab).\n\n"
        f"Uploads: one image per question (JPEG, PNG, WebP, TIFF or GIF), at most {limits.max_mb} MB and "
        f"{limits.max_pixels // 1_000_000} megapixels; a PNG, WebP, TIFF or GIF at most "
        f"{limits.max_decode_pixels // 1_000_000} megapixels (only a JPEG is decoded at reduced scale).\n\n"
        f"API: `/{CHAT_API}` and `/{SPECIMEN_API}` through `gradio_client` (\"Use via API\" at the bottom of the page)."
    )


def build_app(assistant: Any, collection_dir: str | Path, *, limits: UploadLimits | None = None,
              uploads: UploadRegistry | None = None) -> gr.Blocks:
    """The Blocks app for `assistant`, whose collection lives at `collection_dir`.

    `uploads` records whose uploads are whose (`demo.gate` fills it); serve the app through
    `demo.server.create_server`, which puts the gate in front: without it no upload is accepted.
    """
    limits = limits or UploadLimits()
    uploads = uploads or UploadRegistry()
    store = ImageStore(collection_dir, offer=uploads.offer)
    info = assistant.info()
    choices = assistant.filter_choices()
    year_lo, year_hi = _year_span(choices)
    from retrieval.collections import Collection

    names = SpecimenNames(Collection.open(collection_dir).specimens())
    handlers = DemoHandlers(assistant, store, limits, (year_lo, year_hi), uploads, names,
                            str(info.get("collection") or ""))
    examples, labels = build_examples(collection_dir, store)  # their images are thumbnails: offered to all
    described = getattr(getattr(assistant, "res", None), "descriptions", None)  # the assistant's, loaded once
    years = f"{year_lo}–{year_hi}" if year_lo is not None and year_hi is not None else "any"

    # Uploads and served copies older than a day are removed hourly: a public demo's cache must not grow forever.
    with gr.Blocks(title="Herbaria", analytics_enabled=False, fill_width=True, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            f"## Herbaria\nAsk about the **{int(info.get('specimens') or 0):,} specimens** of "
            f"*{md_escape(info.get('collection'))}*: describe a morphology, name a taxon, or attach a photo of a "
            "sheet. Answers cite catalog numbers and quote the descriptions they rely on."
            + "".join(f"\n\n**Note:** {md_escape(n)}." for n in info.get("notices") or []),  # e.g. a test encoder
            elem_id="herbaria-header",
        )
        # No label badges on the chat and the gallery: they covered the first message and thumbnail.
        gallery = gr.Gallery(label="Specimens", columns=3, height=560, object_fit="contain", allow_preview=True,
                             show_label=False, buttons=["download", "fullscreen"], elem_id="herbaria-gallery",
                             render=False, interactive=False)
        # The maps carry their title in the picture: a label badge would cover it.
        results_map = gr.Image(label="Where these specimens were collected", type="filepath", interactive=False,
                               render=False, show_label=False, elem_id="herbaria-results-map", height=300,
                               buttons=["download"])
        traits = gr.Markdown(label="trait_description", render=False, elem_id="herbaria-traits")
        taxa = gr.Markdown(label="taxa", render=False, elem_id="herbaria-taxa")
        turn_json = gr.JSON(label="turn", visible=False, render=False)
        conversation = gr.State(None)
        shown_ids = gr.State([])
        family = gr.Dropdown(_choices(choices, "families", "family"), value=[], multiselect=True, label="family",
                             render=False)
        country = gr.Dropdown(_choices(choices, "countries", "country"), value=[], multiselect=True, label="country",
                              render=False)
        institution = gr.Dropdown(_choices(choices, "institutions", "institution", "institutionCode"), value=[],
                                  multiselect=True, label="institution", render=False)
        year_from = gr.Number(year_lo or 0, label="year_from", precision=0, render=False,
                              info=f"collected from (collection: {years}; 0 = any)")
        year_to = gr.Number(year_hi or 0, label="year_to", precision=0, render=False, info="collected until (0 = any)")

        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=380):
                # Rendered here, before the chat, so that ChatInterface does not stack them in its own accordion.
                with gr.Accordion("Filters: family, country, institution, years", open=False):
                    with gr.Row():
                        family.render()
                        country.render()
                        institution.render()
                    with gr.Row():
                        year_from.render()
                        year_to.render()
                gr.ChatInterface(
                    fn=handlers.respond,
                    multimodal=True,
                    chatbot=gr.Chatbot(label="Herbaria", show_label=False, height=560, buttons=["copy"],
                                       elem_id="herbaria-chat"),
                    # No autofocus: on a phone it scrolled the header away (and opened the keyboard) on load.
                    textbox=gr.MultimodalTextbox(
                        file_types=["image"], file_count="single", sources=["upload"], autofocus=False,
                        placeholder="Ask about leaves, flowers or a taxon — or attach a photo of a sheet",
                        elem_id="herbaria-input"),
                    additional_inputs=[family, country, institution, year_from, year_to, conversation],
                    additional_outputs=[gallery, results_map, traits, taxa, conversation, shown_ids, turn_json],
                    examples=examples,
                    example_labels=labels,
                    cache_examples=False,
                    # The page's own event: API clients get the `/chat` event below instead, and demo.gate
                    # refuses this one to them (it runs the same handler and checks for the page).
                    api_name="chat_ui",
                    api_visibility="private",
                    fill_height=False,
                    save_history=False,
                    flagging_mode="never",
                )
            with gr.Column(scale=4, min_width=340):
                with gr.Tabs(selected="results") as tabs:
                    with gr.Tab("Specimens", id="results"):
                        gallery.render()
                        results_map.render()
                        traits.render()
                        taxa.render()
                        turn_json.render()
                    with gr.Tab("Specimen", id="specimen"):
                        with gr.Row():
                            specimen_box = gr.Textbox(label="Specimen", scale=3, elem_id="herbaria-specimen-box",
                                                      placeholder="Catalog number (HUH 17348), occurrenceID or #id")
                            show = gr.Button("Show", scale=1, variant="secondary")
                        specimen_md = gr.Markdown("Choose a specimen in the gallery, or type its catalog number.",
                                                  label="header", elem_id="herbaria-specimen-header")
                        specimen_viewer = gr.HTML("", elem_id="herbaria-viewer")
                        specimen_fields = gr.HTML("", elem_id="herbaria-fields")
                        specimen_map = gr.Image(label="Locality", type="filepath", interactive=False, height=320,
                                                show_label=False,
                                                elem_id="herbaria-map", buttons=["download"])
                        specimen_citation = gr.Textbox(label="Cite this specimen", interactive=False, lines=2,
                                                       buttons=["copy"], elem_id="herbaria-citation")
                        specimen_json = gr.JSON(label="record", visible=False)
                    with gr.Tab("About", id="about"):
                        gr.Markdown(about_markdown(info, limits, description_summary(collection_dir, described)),
                                    elem_id="herbaria-about")

        api_message = gr.MultimodalTextbox(visible=False, label="message", file_types=["image"], file_count="single")
        api_answer = gr.Markdown(visible=False, label="answer")
        api_ask = gr.Button(visible=False)
        api_ask.click(handlers.respond_api, [api_message, family, country, institution, year_from, year_to,
                                             conversation],
                      [api_answer, gallery, traits, taxa, conversation, shown_ids, turn_json], api_name=CHAT_API,
                      api_description="Ask a question (text and/or one image); streams the answer, then returns "
                                      "the gallery, trait description, taxa and the turn as JSON. Follow-ups in "
                                      "the same client session refer to the previous results.")

        # The `/specimen` API keeps its four outputs (header, image, Darwin Core table, record) on hidden
        # components; the page shows the richer specimen page below.
        api_specimen = gr.Textbox(visible=False, label="specimen")
        api_header = gr.Markdown(visible=False, label="header")
        api_image = gr.Image(visible=False, type="filepath", label="Sheet")
        api_table = gr.Dataframe(visible=False, headers=["field", "value"], label="Darwin Core")
        api_record = gr.JSON(visible=False, label="record")
        api_show = gr.Button(visible=False)
        api_show.click(handlers.specimen, [api_specimen], [api_header, api_image, api_table, api_record],
                       api_name=SPECIMEN_API,
                       api_description="A specimen by catalog number (\"HUH 17348\"), occurrenceID or specimen id: "
                                       "header with source link, image, Darwin Core fields, and the record as JSON.")
        view = [specimen_box, specimen_md, specimen_viewer, specimen_fields, specimen_map, specimen_citation,
                specimen_json]
        show.click(handlers.page, [specimen_box], view, api_visibility="private")
        specimen_box.submit(handlers.page, [specimen_box], view, api_visibility="private")
        gallery.select(handlers.select, [shown_ids], [tabs, *view], api_visibility="private")
        # A permalink on a phone: the specimen page sits below the chat, so bring it into view once it is shown.
        demo.load(handlers.open_permalink, None, [tabs, *view], api_visibility="private", js=SCROLL_TO_SPECIMEN)
    return demo
