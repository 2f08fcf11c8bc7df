"""The Gradio app: a multimodal chat beside a specimen gallery, a trait panel and a specimen view.

Everything a visitor sends passes through `demo.uploads` first, and everything
shown comes out of one `HerbariaAssistant`: the app only lays results out. Errors
the user can act on (`HerbariaError`) are shown as they are; anything else is a
bug: logged with its traceback, shown as one generic line, never as a trace.
"""

from __future__ import annotations

import logging
import os
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
from demo.uploads import (  # noqa: E402
    UploadLimits,
    UploadRegistry,
    check_question,
    check_upload,
    public_message,
)
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
"""

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
    if caption.get("text"):
        lines.append(md_escape(caption["text"]))
    rows = []
    for organ in caption.get("organs") or []:
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
                 years: tuple[int | None, int | None] = (None, None), uploads: UploadRegistry | None = None) -> None:
        self.assistant = assistant
        self.store = store
        self.limits = limits
        self.years = years
        self.uploads = uploads or UploadRegistry()

    # ------------------------------------------------------------------ chat
    def respond(self, message: Any, history: list[Any], family: Any, country: Any, institution: Any,
                year_from: Any, year_to: Any, conversation: dict[str, Any] | None,
                request: gr.Request | None = None) -> Iterator[tuple[Any, ...]]:
        """Stream the answer text, then the gallery, trait description, taxa, state and the turn as JSON."""
        n_extra = 6
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
            yield (result.text, items, caption_markdown(result.caption), taxa_markdown(result.taxa),
                   result.state, ids, public)
        except HerbariaError as err:
            shown = public_message(str(err))
            log.info("turn refused: %s", shown)
            yield (f"⚠️ {shown}", *_skip(5), {"error": shown, "text": f"⚠️ {shown}", "specimens": []})
        except Exception:
            log.exception("chat turn failed")
            yield (f"⚠️ {GENERIC_ERROR}", *_skip(5), {"error": GENERIC_ERROR, "text": f"⚠️ {GENERIC_ERROR}",
                                                        "specimens": []})

    def respond_api(self, message: Any, family: Any, country: Any, institution: Any, year_from: Any, year_to: Any,
                    conversation: dict[str, Any] | None,
                    request: gr.Request | None = None) -> Iterator[tuple[Any, ...]]:
        """The `/chat` API: the chat turn without the chat history component."""
        yield from self.respond(message, [], family, country, institution, year_from, year_to, conversation,
                                request)

    # ------------------------------------------------------------------ specimen view
    def specimen(self, specimen_id: Any) -> tuple[Any, ...]:
        """Header with the source link, the image, the Darwin Core table, and the record as JSON."""
        try:
            if specimen_id in (None, ""):
                raise BadInput("Choose a specimen in the gallery, or type its specimen id.")
            try:
                sid = int(float(specimen_id))
            except (TypeError, ValueError):
                raise BadInput(f"{specimen_id!r} is not a specimen id (a whole number)") from None
            try:
                record = self.assistant.specimen(sid)
            except (KeyError, LookupError):
                raise BadInput(f"There is no specimen {sid} in this collection.") from None
            name = md_escape(record.get("scientificName") or "Unnamed specimen")
            catalog = md_escape(" · ".join(str(record.get(k)) for k in ("institutionCode", "catalogNumber")
                                           if record.get(k)))
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

    def select(self, ids: list[int] | None, event: gr.SelectData) -> tuple[Any, ...]:
        """A click on a gallery item opens it in the specimen tab."""
        index = event.index if isinstance(event.index, int) else (event.index or [0])[0]
        if not ids or not 0 <= index < len(ids):
            return (gr.skip(), gr.skip(), *self.specimen(None))
        return (gr.Tabs(selected="specimen"), ids[index], *self.specimen(ids[index]))


# ---------------------------------------------------------------------------- layout


def build_examples(collection_dir: str | Path, store: ImageStore) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Examples made from the collection itself, so that each one has answers in it."""
    from retrieval.collection import Collection

    table = Collection.open(collection_dir).specimens()
    examples: list[list[dict[str, Any]]] = [[{"text": "Which specimens have opposite, toothed leaves?", "files": []}]]
    labels = ["Morphology: opposite, toothed leaves"]
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


def about_markdown(info: dict[str, Any], limits: UploadLimits) -> str:
    rows = [("Collection", info.get("collection")), ("Specimens", f"{int(info.get('specimens') or 0):,}"),
            ("Image encoder", info.get("encoder")), ("Trait captioner", info.get("captioner")),
            ("Taxa with descriptions", info.get("taxa_described")), ("Chat model", info.get("chat_model") or
                                                                      "none (deterministic, grounded composer)")]
    table = "\n".join(f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in rows if v not in (None, ""))
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
    handlers = DemoHandlers(assistant, store, limits, (year_lo, year_hi), uploads)
    examples, labels = build_examples(collection_dir, store)  # their images are thumbnails: offered to all
    years = f"{year_lo}–{year_hi}" if year_lo is not None and year_hi is not None else "any"

    # Uploads and served copies older than a day are removed hourly: a public demo's cache must not grow forever.
    with gr.Blocks(title="Herbaria", analytics_enabled=False, fill_width=True, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            f"## Herbaria\nAsk about the **{int(info.get('specimens') or 0):,} specimens** of "
            f"*{md_escape(info.get('collection'))}*: describe a morphology, name a taxon, or attach a photo of a "
            "sheet. Answers cite catalog numbers and quote the descriptions they rely on.",
            elem_id="herbaria-header",
        )
        gallery = gr.Gallery(label="Specimens", columns=3, height=520, object_fit="contain", allow_preview=True,
                             show_label=True, buttons=["download", "fullscreen"], elem_id="herbaria-gallery",
                             render=False, interactive=False)
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
                    chatbot=gr.Chatbot(label="Herbaria", height=560, buttons=["copy"], elem_id="herbaria-chat"),
                    textbox=gr.MultimodalTextbox(
                        file_types=["image"], file_count="single", sources=["upload"], autofocus=True,
                        placeholder="Ask about leaves, flowers or a taxon — or attach a photo of a sheet",
                        elem_id="herbaria-input"),
                    additional_inputs=[family, country, institution, year_from, year_to, conversation],
                    additional_outputs=[gallery, traits, taxa, conversation, shown_ids, turn_json],
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
                        traits.render()
                        taxa.render()
                        turn_json.render()
                    with gr.Tab("Specimen", id="specimen"):
                        with gr.Row():
                            specimen_id = gr.Number(None, label="specimen_id", precision=0, scale=3)
                            show = gr.Button("Show", scale=1, variant="secondary")
                        specimen_md = gr.Markdown("Choose a specimen in the gallery.", label="header")
                        specimen_image = gr.Image(label="Sheet", type="filepath", interactive=False, height=520,
                                                  buttons=["fullscreen", "download"])
                        specimen_table = gr.Dataframe(headers=["field", "value"], label="Darwin Core", wrap=True,
                                                      elem_id="herbaria-fields",
                                                      interactive=False, column_widths=["30%", "70%"])
                        specimen_json = gr.JSON(label="record", visible=False)
                    with gr.Tab("About", id="about"):
                        gr.Markdown(about_markdown(info, limits))

        api_message = gr.MultimodalTextbox(visible=False, label="message", file_types=["image"], file_count="single")
        api_answer = gr.Markdown(visible=False, label="answer")
        api_ask = gr.Button(visible=False)
        api_ask.click(handlers.respond_api, [api_message, family, country, institution, year_from, year_to,
                                             conversation],
                      [api_answer, gallery, traits, taxa, conversation, shown_ids, turn_json], api_name=CHAT_API,
                      api_description="Ask a question (text and/or one image); streams the answer, then returns "
                                      "the gallery, trait description, taxa and the turn as JSON. Follow-ups in "
                                      "the same client session refer to the previous results.")

        view = [specimen_md, specimen_image, specimen_table, specimen_json]
        show.click(handlers.specimen, [specimen_id], view, api_name=SPECIMEN_API,
                   api_description="A specimen by specimen_id: header with source link, image, Darwin Core "
                                   "fields, and the record as JSON.")
        specimen_id.submit(handlers.specimen, [specimen_id], view, api_visibility="private")
        gallery.select(handlers.select, [shown_ids], [tabs, specimen_id, *view], api_visibility="private")
    return demo
