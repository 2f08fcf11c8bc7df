"""Training pairs from the collection itself: each specimen image with a text of its taxon.

Why sampled texts: a sheet paired only with its name would make the model a species
classifier that knows no morphology, and a query like "opposite serrate leaves" would
find nothing. So each time a sheet is drawn it gets one of: a name template ("herbarium
sheet of Coffea arabica, Rubiaceae"), one organ-level sentence of one of its taxon's
linked descriptions (a different description and sentence from draw to draw), or a few
of the trait phrases extracted from them ("leaf opposite, petal white"). Kinds a taxon
lacks (no description linked) are skipped. Held-out specimens and held-out taxa are
split off here, deterministically from the seed, so evaluation before and after
training sees the same sheets.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.collections import Collection
from retrieval.errors import BadInput
from retrieval.flora import normalize_name, species_of

TEXT_KINDS = ("name", "sentence", "traits")
DEFAULT_TEXT_WEIGHTS = {"name": 0.3, "sentence": 0.4, "traits": 0.3}
_TEMPLATES = ("herbarium sheet of {name}{family}", "a herbarium specimen of {name}", "pressed and dried {name}{family}",
              "{name}")
MAX_SENTENCE_CHARS = 300


@dataclass
class Taxon:
    """One taxon of the collection with every text it can be paired with, one entry per linked description."""

    key: str  # normalised name, or the label as written when it is not a name (a species code)
    genus: str = ""
    family: str = ""
    sentences: list[list[str]] = field(default_factory=list)  # per description: its organ-level sentences
    traits: list[list[str]] = field(default_factory=list)  # per description: its trait phrases
    sections: list[dict[str, str]] = field(default_factory=list)  # per description: organ group -> text (captioning)

    @property
    def described(self) -> bool:
        return any(self.sentences) or any(self.traits)

    def templates(self) -> list[str]:
        family = f", {self.family}" if self.family else ""
        out = [t.format(name=self.key, family=family) for t in _TEMPLATES]
        if self.genus and self.genus != self.key:
            out.append(f"a herbarium specimen of the genus {self.genus}{family}")
        return out

    def query(self, max_phrases: int = 4) -> str:
        """A morphology query a botanist could type for this taxon: its first qualitative trait phrases (evaluation)."""
        phrases = [p for p in dict.fromkeys(p for table in self.traits for p in table) if not any(c.isdigit() for c in p)]
        return ", ".join(phrases[:max_phrases])


@dataclass
class Specimen:
    specimen_id: int
    image: Path
    taxon: int  # index into PairSet.taxa


@dataclass
class PairSet:
    """Taxa, imaged specimens, and the three disjoint splits (indexes into `specimens`)."""

    taxa: list[Taxon]
    specimens: list[Specimen]
    train: list[int]
    heldout_specimens: list[int]
    heldout_taxa: list[int]
    skipped: dict[str, int] = field(default_factory=dict)

    def taxa_of(self, split: list[int]) -> list[int]:
        return sorted({self.specimens[i].taxon for i in split})

    def summary(self) -> dict[str, Any]:
        return {"specimens": len(self.specimens), "taxa": len(self.taxa),
                "described_taxa": sum(1 for t in self.taxa if t.described),
                "train_specimens": len(self.train), "heldout_specimens": len(self.heldout_specimens),
                "heldout_taxa": len(self.taxa_of(self.heldout_taxa)), "heldout_taxa_specimens": len(self.heldout_taxa),
                "skipped": dict(self.skipped)}


def trait_phrase(trait: dict[str, Any]) -> str:
    """'leaf opposite', 'stem not hairy', 'petal usually white', 'shrub' from a stored trait."""
    value = str(trait.get("value") or "").strip().lower()
    if trait.get("negated"):
        value = f"not {value}"
    if trait.get("modifier"):
        value = f"{trait['modifier']} {value}"
    organ = str(trait.get("organ") or "").strip()
    return value if organ in ("plant", "") else f"{organ} {value}"


def _description_texts(record: Any, traits: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[str, str]]:
    """(organ-level sentences, trait phrases, organ sections) of one description."""
    from captioning.sources import taxon_record

    text = record.text
    spans = sorted({tuple(t["sentence_span"]) for t in traits if t.get("sentence_span") and t.get("organ")})
    sentences = [s for s in (" ".join(text[a:b].split()) for a, b in spans) if 8 <= len(s)]
    sentences = [s if len(s) <= MAX_SENTENCE_CHARS else s[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] for s in sentences]
    phrases = list(dict.fromkeys(p for p in (trait_phrase(t) for t in traits) if p))
    sections = taxon_record(record.name, text, sections=record.sections or None, traits=traits,
                            lang=record.language)["sections"]
    return list(dict.fromkeys(sentences)), phrases, sections


def _linked_descriptions(collection: Collection) -> dict[str, list[tuple[Any, list[dict[str, Any]]]]]:
    """Normalised name -> [(description record, its traits)], every flora that describes it."""
    from retrieval.flora import descriptions_dir
    from retrieval.flora import DescriptionIndex

    folder = descriptions_dir(collection)
    if not DescriptionIndex.exists(folder):
        return {}
    index = DescriptionIndex.load(folder)
    out: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = defaultdict(list)
    for record, traits in zip(index.records, index.traits):
        name = record.name or normalize_name(record.taxon)
        if name:
            out[name].append((record, traits))
    return out


def collect_pairs(collection: Collection | str | Path, *, heldout_taxa: float = 0.1, heldout_specimens: float = 0.1,
                  seed: int = 0) -> PairSet:
    """Every imaged, named specimen with its taxon's texts, split into train / held-out specimens / held-out taxa.

    A specimen's taxon is its normalised scientificName (a subspecies reaches its species'
    descriptions, as in `descriptions add`); a label that is not a name ("V01", from
    `--map speciesCode=scientificName`) is kept as written and gets name templates only.
    """
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    if not (0 <= heldout_taxa < 1 and 0 <= heldout_specimens < 1):
        raise BadInput("held-out fractions must be in [0, 1)")
    table = col.specimens()
    descriptions = _linked_descriptions(col)
    skipped: dict[str, int] = defaultdict(int)
    taxa: dict[str, Taxon] = {}
    members: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for row in table.sort_values("specimen_id").itertuples(index=False):
        image = str(getattr(row, "image", "") or "")
        raw = " ".join(str(getattr(row, "scientificName", "") or "").split())
        if not image:
            skipped["no image"] += 1
            continue
        key = normalize_name(raw) or raw
        if not key:
            skipped["no scientificName"] += 1
            continue
        if key not in taxa:
            linked = descriptions.get(key) or descriptions.get(species_of(key)) or []
            genus = str(getattr(row, "genus", "") or "") or (key.split(" ")[0] if normalize_name(raw) else "")
            family = str(getattr(row, "family", "") or "") or next((r.family for r, _ in linked if r.family), "")
            taxon = Taxon(key, genus=genus, family=family)
            for record, traits in linked:
                sentences, phrases, sections = _description_texts(record, traits)
                taxon.sentences.append(sentences)
                taxon.traits.append(phrases)
                taxon.sections.append(sections)
            taxa[key] = taxon
        members[key].append((int(row.specimen_id), col.path / image))
    if len(taxa) < 2:
        raise BadInput(f"collection {col.path.name} has {len(taxa)} named taxa with images; fine-tuning needs at least 2 "
                       "(map a name column with `herbaria ingest --map COLUMN=scientificName`)")
    ordered = sorted(taxa)
    index_of = {k: i for i, k in enumerate(ordered)}
    specimens = [Specimen(sid, path, index_of[k]) for k in ordered for sid, path in members[k]]
    return _split(PairSet([taxa[k] for k in ordered], specimens, [], [], [], dict(skipped)),
                  heldout_taxa, heldout_specimens, seed)


def _split(pairs: PairSet, heldout_taxa: float, heldout_specimens: float, seed: int) -> PairSet:
    """Held-out taxa first (none of their sheets is trained on), then held-out sheets of the remaining taxa,
    never a taxon's last sheet (its taxon must stay seen in training)."""
    rng = random.Random(seed)
    n_taxa = len(pairs.taxa)
    out_taxa = set(rng.sample(range(n_taxa), min(n_taxa - 2, round(heldout_taxa * n_taxa)))) if n_taxa > 2 else set()
    by_taxon: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(pairs.specimens):
        by_taxon[s.taxon].append(i)
    pairs.heldout_taxa = sorted(i for t in out_taxa for i in by_taxon[t])
    remaining = [i for t in sorted(by_taxon) if t not in out_taxa for i in by_taxon[t]]
    budget = math.floor(heldout_specimens * len(remaining) + 0.5)
    candidates = list(remaining)
    rng.shuffle(candidates)
    left = {t: len(v) for t, v in by_taxon.items()}
    chosen: set[int] = set()
    for i in candidates:
        if len(chosen) >= budget:
            break
        taxon = pairs.specimens[i].taxon
        if left[taxon] > 1:
            chosen.add(i)
            left[taxon] -= 1
    pairs.heldout_specimens = sorted(chosen)
    pairs.train = [i for i in remaining if i not in chosen]
    return pairs


def sample_text(taxon: Taxon, rng: random.Random, weights: dict[str, float] | None = None, *,
                max_phrases: int = 3) -> tuple[str, str]:
    """(kind, text): one text of the taxon, its kind drawn by `weights` among the kinds it has."""
    weights = weights or DEFAULT_TEXT_WEIGHTS
    unknown = set(weights) - set(TEXT_KINDS)
    if unknown:
        raise BadInput(f"unknown text kind(s) {', '.join(sorted(unknown))}; use {', '.join(TEXT_KINDS)}")
    available = {"name": True, "sentence": any(taxon.sentences), "traits": any(taxon.traits)}
    kinds = [k for k in TEXT_KINDS if available[k] and weights.get(k, 0) > 0] or ["name"]
    kind = rng.choices(kinds, weights=[weights.get(k, 1.0) for k in kinds])[0]
    if kind == "name":
        return kind, rng.choice(taxon.templates())
    pools = taxon.sentences if kind == "sentence" else taxon.traits
    pool = rng.choice([p for p in pools if p])  # one of the linked descriptions, not always the same
    if kind == "sentence":
        return kind, rng.choice(pool)
    return kind, ", ".join(rng.sample(pool, min(len(pool), rng.randint(1, max_phrases))))
