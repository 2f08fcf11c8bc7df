"""Stages: caption an image against a collection, and train a collection's own captioner.

Captioning encodes the image once: the pooled vector finds the neighbours in the
collection's index, and the same pass's patch tokens feed a neural decoder built on
that encoder. Every result says how strongly the neighbours support what it states,
whichever captioner wrote it, so a botanist can tell grounded traits from guesses.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from captioning.base import Encoded, Neighbour, encode
from captioning.decoding import DecodeOptions
from captioning.grounded import GROUP_ORDER, TraitCaptioner, candidate_taxa, organ_group, support_for
from captioning.registry import CAPTIONER_DIR, MODEL_DIR, create_captioner
from captioning.sources import IndexTexts, MappingTexts, TaxonTexts, collection_texts, neighbours_from_records
from retrieval.collections import Collection
from retrieval.vectors import ImageInput
from retrieval.errors import BadInput
from retrieval.filters import allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex
from retrieval.vectors import index_dir
from retrieval.collections import DEFAULT_WAIT, collection_lock
from retrieval.flora import normalize_name
from retrieval.registry import preset
from retrieval.search import open_index, rank_records


def _open(collection: str | Path | Collection) -> Collection:
    return collection if isinstance(collection, Collection) else Collection.open(collection)


def _texts(collection: Collection, descriptions: Any) -> TaxonTexts | None:
    """None: the collection's stored descriptions; a loaded DescriptionIndex; a TaxonTexts; or {taxon: text}."""
    if descriptions is None:
        return collection_texts(collection)
    if hasattr(descriptions, "records") and hasattr(descriptions, "traits"):
        return IndexTexts(descriptions)
    if hasattr(descriptions, "get") and hasattr(descriptions, "names"):
        return descriptions
    return MappingTexts(descriptions)


def _neighbour_view(nbs: list[Neighbour]) -> list[dict[str, Any]]:
    return [{"rank": i + 1, **{k: nb.get(k) for k in ("specimen_id", "score", "scientificName", "name", "family",
                                                        "catalogNumber", "image", "described")}}
            for i, nb in enumerate(nbs)]


def _read_back(text: str, neighbours: list[Neighbour]) -> list[dict[str, Any]]:
    """Traits stated by a neural caption, grouped by organ, with how many neighbours carry each."""
    from retrieval.flora import extract_traits

    organs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in support_for(extract_traits(text), neighbours):
        organs[t.pop("organ")].append(t)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return [{"organ": o, "group": organ_group(o), "traits": traits}
            for o, traits in sorted(organs.items(), key=lambda kv: (order.get(organ_group(kv[0]), len(order)), kv[0]))]


class CaptionService:
    """A collection, its index, encoder, descriptions and one captioner, loaded once (the chat keeps one)."""

    def __init__(self, collection: str | Path | Collection, *, captioner: str = "grounded", model: str | None = None,
                 device: str | None = None, precision: str = "auto", descriptions: Any = None,
                 **captioner_options: Any) -> None:
        self.collection = _open(collection)
        self.table = self.collection.table()  # the memory-mapped serving table, shared with the chat
        self.index: SpecimenIndex | None = None
        self.encoder = None
        if (index_dir(self.collection) / "manifest.json").exists():
            self.index, self.encoder = open_index(self.collection, model=model, device=device)
        self.texts = _texts(self.collection, descriptions)
        self.captioner = create_captioner(captioner, collection=self.collection, device=device, precision=precision,
                                          encoder=self.encoder.name if self.encoder is not None else None,
                                          **captioner_options)
        self.name = captioner

    def neighbours(self, encoded: Encoded, *, k: int = 8, filters: Any = None) -> list[Neighbour]:
        if self.index is None:
            return []
        allowed = allowed_ids(self.table, parse_filters(filters))
        hits = self.index.search(encoded.pooled[:1].cpu().numpy(), k=k, allowed=allowed)[0]
        return neighbours_from_records(rank_records(self.collection, hits, self.table), self.texts)

    def caption(self, image: ImageInput, *, encoded: Encoded | None = None, k: int = 8, filters: Any = None,
                options: DecodeOptions | None = None) -> dict[str, Any]:
        """Caption one image; `encoded` is a pass already made with the index's encoder (it is reused)."""
        if k < 1:
            raise BadInput("k must be at least 1")
        started = time.perf_counter()
        cap = self.captioner
        if self.encoder is None:
            if isinstance(cap, TraitCaptioner):
                raise BadInput(f"collection {self.collection.path.name} has no image index; run `herbaria index` first")
            encoded = None
        elif encoded is None or encoded.fingerprint != self.encoder.fingerprint:
            encoded = encode(self.encoder, [image])
        neighbours = self.neighbours(encoded, k=k, filters=filters) if encoded is not None else []
        out = cap.caption([image], encoded=encoded, neighbours=[neighbours], options=options)[0]
        result: dict[str, Any] = {"captioner": self.name, "kind": getattr(cap, "kind", "grounded"), "text": out["text"]}
        if isinstance(cap, TraitCaptioner):
            result.update(organs=out["organs"], taxa=out["taxa"])
        else:
            organs = _read_back(out["text"], neighbours)
            result.update(organs=organs, taxa=candidate_taxa(neighbours), sections=out.get("sections"),
                          unsupported=[{"organ": o["organ"], **t} for o in organs for t in o["traits"] if not t["count"]],
                          trained=bool(getattr(cap, "trained", getattr(cap, "meta", {}).get("trained", True))),
                          tokens=out.get("tokens"))
            if not result["trained"]:
                result["warning"] = (f"captioner {self.name!r} is untrained (random or generic weights): its text is "
                                     "not a description; train one with `herbaria train-captioner`")
        result.update(k=k, neighbours=_neighbour_view(neighbours),
                      described_neighbours=sum(1 for nb in neighbours if nb["described"]),
                      encoder=self.encoder.name if self.encoder is not None else None,
                      decoding=(options or DecodeOptions()).to_dict() if not isinstance(cap, TraitCaptioner) else None,
                      seconds=round(time.perf_counter() - started, 3))
        return result


def decode_options(*, strategy: str = "greedy", num_beams: int = 3, max_new_tokens: int = 60, min_new_tokens: int = 0,
                   repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 3, top_p: float = 0.9, top_k: int = 0,
                   temperature: float = 1.0, seed: int | None = None) -> DecodeOptions:
    return DecodeOptions(strategy=strategy, num_beams=num_beams, max_new_tokens=max_new_tokens,
                         min_new_tokens=min_new_tokens, repetition_penalty=repetition_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size, top_p=top_p, top_k=top_k, temperature=temperature,
                         seed=seed)


def caption_image(collection: str | Path | Collection, image: ImageInput, *, captioner: str = "grounded", k: int = 8,
                  filters: Any = None, model: str | None = None, device: str | None = None, precision: str = "auto",
                  encoded: Encoded | None = None, descriptions: Any = None, strategy: str = "greedy",
                  num_beams: int = 3, max_new_tokens: int = 60, repetition_penalty: float = 1.0,
                  no_repeat_ngram_size: int = 3, top_p: float = 0.9, temperature: float = 1.0,
                  seed: int | None = None) -> dict[str, Any]:
    """Trait description of one image: text, organs with neighbour support, candidate taxa, neighbours."""
    options = decode_options(strategy=strategy, num_beams=num_beams, max_new_tokens=max_new_tokens,
                             repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                             top_p=top_p, temperature=temperature, seed=seed)
    service = CaptionService(collection, captioner=captioner, model=model, device=device, precision=precision,
                             descriptions=descriptions)
    return service.caption(image, encoded=encoded, k=k, filters=filters, options=options)


# --------------------------------------------------------------------------- training
def _encode_all(encoder: Any, paths: list[Path], *, batch_size: int, progress: bool) -> Encoded:
    """Every training image once (the encoder is frozen); tokens kept in the encoder's dtype to save memory."""
    pooled, tokens = [], []
    with tqdm(total=len(paths), desc="encoding training images", unit="img", disable=not progress) as bar:
        for lo in range(0, len(paths), batch_size):
            enc = encode(encoder, paths[lo:lo + batch_size])
            pooled.append(enc.pooled.cpu())
            tokens.append(enc.tokens.cpu())
            bar.update(len(enc))
    return Encoded(torch.cat(pooled), torch.cat(tokens), encoder.name, encoder.fingerprint)


def _start(model_dir: Path, captioner: str, *, corpus: list[str], organs: set[str], encoder: str | None,
           device: str | None, resume: bool, main_process: bool) -> Any:
    """The captioner to train: the one in model_dir when resuming, else a fresh one from the preset,
    saved before training (by the main process; the others load that copy, so all share one tokenizer)."""
    from accelerate import PartialState

    from captioning.decoder import NeuralCaptioner

    if resume and (model_dir / "captioner.json").exists():
        return NeuralCaptioner.load(model_dir, device=device)
    spec = preset("captioners", captioner)
    if spec.get("kind") != "decoder":
        raise BadInput(f"captioner {captioner!r} is not a trainable decoder; use decoder-distilgpt2, decoder-gpt2 or tiny-test")
    if main_process:
        cap = NeuralCaptioner.from_spec(spec, encoder=encoder, device=device, texts=corpus)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        cap.organs = sorted(organs, key=lambda o: (order.get(o, len(order)), o))
        cap.meta.update(scope=spec.get("scope", "all"), organs=cap.organs)
        cap.save(model_dir)
    PartialState().wait_for_everyone()
    return cap if main_process else NeuralCaptioner.load(model_dir, device=device)


def _pairs(col: Collection, described: Any, names: Any, texts: TaxonTexts, index: SpecimenIndex | None,
           pooled: torch.Tensor | None, k: int, table: Any) -> list[Any]:
    """(feature row, specimen, its taxon's sections, its k nearest other specimens) for each described specimen."""
    from captioning.training import Pair

    pairs = []
    for row, (sid, name) in enumerate(zip(described["specimen_id"].astype(int), names)):
        neighbours = None
        if index is not None and k > 0 and pooled is not None:
            hits = [(h, s) for h, s in index.search(pooled[row:row + 1].numpy(), k=k + 1)[0] if h != sid][:k]
            neighbours = neighbours_from_records(rank_records(col, hits, table), texts)
        pairs.append(Pair(row, int(sid), name, dict(texts.get(name)["sections"]), neighbours))
    return pairs


def train_captioner(collection: str | Path | Collection, *, captioner: str = "decoder-distilgpt2",
                    out: str | Path | None = None, encoder: str | None = None, descriptions: Any = None, k: int = 8,
                    epochs: int = 10, batch_size: int = 16, lr: float | None = None, scope: str = "auto",
                    val_fraction: float = 0.1, resume: bool = True, mixed_precision: str = "auto", seed: int = 0,
                    device: str | None = None, max_target_tokens: int = 96, max_steps: int | None = None,
                    progress: bool = True, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
    """Train a decoder on (specimen image, its taxon's description) pairs; writes COLLECTION/captioner/model.

    The encoder defaults to the one the collection's index was built with, so captioning
    reuses the index's image pass; with an index, prompts carry the k nearest other
    specimens' descriptions (retrieval-augmented). Several GPUs: run it under `accelerate launch`.
    Writing into the collection, the main process holds its write lock (waiting up to `wait` s).
    Returns the training and validation report.
    """
    from accelerate import PartialState

    from captioning.training import evaluate, fit, make_examples

    col = _open(collection)
    texts = _texts(col, descriptions)
    if texts is None or not texts.names():
        raise BadInput(f"collection {col.path.name} has no taxon descriptions to learn from; add flora descriptions first")
    if not 0 <= val_fraction < 1:
        raise BadInput("val_fraction must be in [0, 1)")
    everything = col.specimens()
    table = everything[everything["image"].fillna("").astype(str) != ""]
    names = table["scientificName"].fillna("").astype(str).map(normalize_name)
    keep = [bool(n) and texts.get(n) is not None for n in names]
    described, names = table[keep], names[keep]
    if described.empty:
        raise BadInput(f"none of the {len(table)} imaged specimens of {col.path.name} belongs to a described taxon")
    index = idx_encoder = None
    if (index_dir(col) / "manifest.json").exists():
        index, idx_encoder = open_index(col, device=device)
    main_process = PartialState().is_main_process
    out = Path(out) if out else col.path / CAPTIONER_DIR
    with ExitStack() as held:
        if main_process and out.resolve().is_relative_to(col.path.resolve()):  # it writes into the collection
            held.enter_context(collection_lock(col.path, purpose="train-captioner", wait=wait))
        model_dir = out / MODEL_DIR
        taxa = sorted(set(names))
        cap = _start(model_dir, captioner, corpus=[s for n in taxa for s in texts.get(n)["sections"].values()],
                     organs={o for n in taxa for o in texts.get(n)["sections"]}, device=device, resume=resume,
                     encoder=encoder or (idx_encoder.name if idx_encoder else None), main_process=main_process)
        paths = [col.path / p for p in described["image"].astype(str)]
        features = _encode_all(cap.encoder, paths, batch_size=32, progress=progress)
        if idx_encoder is not None and idx_encoder.fingerprint != cap.meta["encoder"]["fingerprint"]:
            search_pooled = _encode_all(idx_encoder, paths, batch_size=32, progress=progress).pooled
        else:
            search_pooled = features.pooled if idx_encoder is not None else None
        pairs = _pairs(col, described, names, texts, index, search_pooled, k, everything)
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        n_val = int(round(val_fraction * len(pairs))) if len(pairs) > 1 else 0
        val, train = [pairs[i] for i in sorted(order[:n_val])], [pairs[i] for i in sorted(order[n_val:])]
        scope_ = cap.meta.get("scope", "all") if scope == "auto" else scope
        examples = make_examples(cap, train, max_target_tokens=max_target_tokens)
        lr_ = lr if lr is not None else (1e-3 if cap.meta.get("lm") == "config" else 1e-4)  # from scratch vs pretrained
        history = fit(cap, examples, features, epochs=epochs, batch_size=batch_size, lr=lr_, scope=scope_, out=out,
                      resume=resume, mixed_precision=mixed_precision, seed=seed, max_steps=max_steps, progress=progress)
        validation: dict[str, Any] = {"n": 0}
        if history["finished"] and main_process:
            validation = evaluate(cap, val, features, grounded=TraitCaptioner(),
                                  options=DecodeOptions(max_new_tokens=max_target_tokens + 1))
        summary = {"captioner": cap.name, "base": cap.meta.get("base"), "encoder": cap.encoder_name,
                   "pairs": len(pairs), "train_pairs": len(train), "val_pairs": len(val), "examples": len(examples),
                   "taxa": len(taxa), "organs": cap.organs, "retrieval_k": k if index else 0,
                   "scope": scope_, "lr": lr_, **history, "validation": validation, "out": str(model_dir)}
        if main_process:
            if history["finished"]:
                cap.save(model_dir, trained=True, training={k_: v for k_, v in summary.items() if k_ != "validation"},
                         validation=validation)
            (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary
