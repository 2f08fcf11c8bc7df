"""Morphology search benchmark: recall@1, recall@10 and MRR of each signal and of the fusion.

Queries are written the way a botanist asks: a few traits of one taxon ("opposite leaves,
saw-toothed margin, white flowers"), never a sentence of its description:

- the traits come from the description but are read independently of the extractor: for
  FlorML the organ is the one the flora's own markup gives, for plain text it is the organ
  word heading the clause; states are vocabulary terms found in that organ's text;
- a taxon's rarer traits are preferred (a botanist names what sets a plant apart);
- each trait is re-worded: the state by a glossary synonym when the vocabulary has one
  ("serrate" -> "saw-toothed", "coriaceous" -> "leathery"), the organ by another name when
  there is one, word order and joining varied;
- a query sharing any run of 4 words with the description is discarded (no leakage).

Queries are split in two halves: fusion weights may be tuned on the first (dev) and every
figure is reported on the second (test). Embeddings are cached by chunk text.

    .venv/bin/python bench/eval_morphology.py malesiana --queries 600
    .venv/bin/python bench/eval_morphology.py solanaceae
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.flora import TaxonDescription, read_descriptions  # noqa: E402
from retrieval.morphology import DescriptionIndex, SIGNALS, chunk_text  # noqa: E402
from retrieval.traits import _tokens, split_sentences  # noqa: E402
from retrieval.vocab import fold, vocabulary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
CORPORA = {"malesiana": SHARED / "flora" / "malesiana", "solanaceae": SHARED / "flora" / "solanaceae",
           "gabon": SHARED / "flora" / "gabon"}
# characters a botanist names in a query (positions, prominence or fusion rarely are)
USEFUL = {"shape", "margin", "arrangement", "colour", "pubescence", "surface", "texture", "habit", "architecture",
          "duration", "venation", "sexuality", "dehiscence"}
GENERIC = {"present", "absent", "simple", "free", "distinct", "visible", "fertile", "sterile", "male", "female", "solitary",
           "terminal", "lateral", "basal", "apical", "small", "large", "entire", "glabrous", "green", "brown", "thin", "thick",
           "apparent", "medial", "tinged", "darker", "paler", "lighter", "stout", "lax", "regular", "irregular", "naked", "loose",
           "compact", "close", "adjacent", "collapsing", "abscission", "basiscopic", "acroscopic", "solid", "narrowed",
           "expanded", "similar", "different", "variable", "equal", "unequal", "normal", "typical", "conspicuous", "obscure",
           "prominent", "distinctly", "well", "developed", "reduced", "flat", "plane", "straight", "curved", "dense", "sparse",
           "numerous", "long", "short", "broad", "narrow", "wide", "slender", "massive", "firm", "soft", "hard", "ovuled",
           "petioled", "stalked", "connecting", "upper", "lower", "inner", "outer", "middle", "central", "marginal", "median",
           "dorsal", "ventral", "abaxial", "adaxial", "excurrent", "tree-like", "coarse", "fine", "rough", "smooth", "dull",
           "scattered", "apart", "distant", "distributed", "congested", "roughened", "multicellular", "unicellular",
           "uniseriate", "dendritic", "branched", "unbranched", "sessile", "subsessile", "remote", "crowded", "clustered"}
NEG_WORDS = {"not", "non", "never", "without", "no", "pas", "sans", "ne", "ni", "nor"}


# --------------------------------------------------------------------------- facts


def _clean_state(item, text: str, items: list, k: int) -> bool:
    before = text[max(0, item.start - 40):item.start]
    if before.count("(") > before.count(")"):
        return False  # inside parentheses: a remark, not the description proper
    prev = [x for x in items[max(0, k - 3):k]]
    if any(x.kind == "negation" or (x.kind == "word" and x.value in NEG_WORDS) for x in prev):
        return False
    nxt = items[k + 1:k + 3]
    if len(nxt) >= 2 and nxt[0].kind == "word" and nxt[0].value in ("or", "ou") and nxt[1].kind == "negation":
        return False  # "glabrous or not"
    return True


def facts_from_markup(record: TaxonDescription) -> list[tuple[str, str]]:
    """(organ from the flora's markup, state) pairs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_traits import gold_organ

    voc = vocabulary()
    organ_of: dict[tuple[int, int, str], str | None] = {}
    chars = [(s, e, c) for s, e, c, p in record.markup if not p]
    for s, e, c, p in sorted(record.markup, key=lambda m: (bool(m[3]), m[0])):
        parent = None
        if p:
            owner = next((k for k in chars if k[0] <= s and e <= k[1]), None)
            parent = organ_of.get(owner) if owner else None
        organ_of[(s, e, c)] = gold_organ(c, parent)
    items = _tokens(record.text, 0, len(record.text), record.language, False, voc)
    facts = []
    for k, item in enumerate(items):
        if item.kind != "state" or item.character not in USEFUL or not _clean_state(item, record.text, items, k):
            continue
        covering = [key for key in organ_of if key[0] <= item.start and item.end <= key[1]]
        if not covering:
            continue
        organ = organ_of[min(covering, key=lambda key: key[1] - key[0])]
        if organ:
            for term in item.data.get("terms", [item.value]):
                facts.append((organ, term))
    return facts


def facts_from_clauses(record: TaxonDescription) -> list[tuple[str, str]]:
    """(organ heading the clause, state) pairs for text without markup."""
    voc = vocabulary()
    facts = []
    for s, e in split_sentences(record.text):
        items = _tokens(record.text, s, e, record.language, False, voc)
        sentence_organ = None
        clause_organ = None
        fresh = True
        for k, item in enumerate(items):
            if item.kind == "punct" and item.value in ";:":
                clause_organ, fresh = sentence_organ, True
                continue
            if item.kind in ("organ", "type") and fresh:
                clause_organ = item.value if item.kind == "organ" else item.character
                sentence_organ = sentence_organ or clause_organ
            if item.kind not in ("word",) or item.value not in ("the", "a", "an"):
                fresh = fresh and item.kind in ("organ", "type", "word") and k < 2
            if item.kind in ("part", "organ", "type") and not fresh or item.kind == "word" and item.value in ("with", "of"):
                clause_organ = None  # past a second organ or a "with": whose trait it is gets unclear
            if item.kind == "state" and item.character in USEFUL and clause_organ and _clean_state(item, record.text, items, k):
                for term in item.data.get("terms", [item.value]):
                    facts.append((clause_organ, term))
    return facts


# --------------------------------------------------------------------------- queries


def render(organ: str, term: str, rng: random.Random) -> str:
    """'saw-toothed leaf margins' style wording of one fact (glossary synonym, other organ name)."""
    voc = vocabulary()
    glosses = [g for g in voc.glosses(term) if "(" not in g]
    synonyms = [g for g in voc.synonyms(term) if "(" not in g and " " not in g]
    roll = rng.random()
    value = rng.choice(glosses) if glosses and roll < 0.7 else rng.choice(synonyms) if synonyms and roll < 0.4 else term
    types = {f for table in voc.data["types"].values() for forms in table.values() for f in forms}
    info = voc.organs.get(organ)
    if info:
        forms = [f for f in info["en"][:3] if f.isascii() and f not in types and not f.startswith(("male", "female"))]
    else:
        head, _, part = organ.rpartition(" ")
        forms = [f"{head} {part}s", f"{head} {part}"] if head else [f"{part}s"]
    noun = rng.choice(forms) if forms else organ
    if voc.character(term) == "habit":
        return value
    if " " in value:  # "leaves divided into leaflets", never "divided into leaflets leaves"
        return f"{noun} {value}"
    return f"{value} {noun}" if rng.random() < 0.5 else f"{noun} {value}"


def render_fr(organ: str, term: str, rng: random.Random) -> str | None:
    """French wording: the organ's French name and an inflected French form of the state."""
    voc = vocabulary()
    info = voc.organs.get(organ)
    head, _, part = organ.rpartition(" ")
    if info is None and head in voc.organs and part in voc.relative_parts:
        info = {"fr": [f"{p} du {voc.organs[head]['fr'][0]}" for p in voc.relative_parts[part]["fr"][:1]]}
    types = {f for table in voc.data["types"].values() for forms in table.values() for f in forms}
    nouns = [f for f in (info or {}).get("fr", [])[:2] if f not in types]
    values = voc.states.get(term, {}).get("fr", [])
    if not values or not (nouns or voc.character(term) == "habit"):
        return None
    if voc.character(term) == "habit":
        return rng.choice(values)
    return f"{rng.choice(nouns)} {rng.choice(values)}"


def make_queries(records: list[TaxonDescription], n: int, seed: int, markup: bool, lang: str = "en") -> list[dict]:
    voc = vocabulary()
    facts = {i: facts_from_markup(r) if markup and r.markup else facts_from_clauses(r) for i, r in enumerate(records)}
    df: Counter = Counter()
    for fs in facts.values():
        df.update({(voc.group(o), voc.concept(t)) for o, t in fs})
    n_docs = len(records)
    rng = random.Random(seed)
    targets = [i for i, r in enumerate(records) if r.rank not in ("family", "genus", "tribe", "")]
    rng.shuffle(targets)
    queries = []
    for i in targets:
        text_words = fold(records[i].text).split()
        grams = {" ".join(text_words[j:j + 4]) for j in range(len(text_words) - 3)}
        unique = {}
        for organ, term in facts[i]:
            if term in GENERIC or (lang == "fr" and render_fr(organ, term, random.Random(0)) is None):
                continue
            key = (voc.group(organ), voc.concept(term))
            unique.setdefault(key, (organ, term))
        if len(unique) < 3:
            continue
        ranked = sorted(unique.items(), key=lambda kv: (-math.log(n_docs / df[kv[0]]), kv[0]))
        pool = [v for _, v in ranked[:8]]
        for _ in range(5):
            shuffled = rng.sample(pool, len(pool))
            chosen: list[tuple[str, str]] = []
            for organ, term in shuffled:  # different organs where the description allows
                if len(chosen) < 3 and all(voc.group(organ) != voc.group(o) for o, _ in chosen):
                    chosen.append((organ, term))
            for fact in shuffled:
                if len(chosen) < 3 and fact not in chosen:
                    chosen.append(fact)
            joiner = rng.choice([", ", "; ", " and "])
            text = joiner.join(render(o, t, rng) if lang == "en" else render_fr(o, t, rng) for o, t in chosen)
            if lang == "fr":
                text = text.replace(" and ", " et ")
            words = fold(text).replace(",", " ").replace(";", " ").split()
            if not any(" ".join(words[j:j + 4]) in grams for j in range(len(words) - 3)):
                queries.append({"target": i, "name": records[i].name, "query": text, "facts": chosen})
                break
        if len(queries) >= n:
            break
    return queries


# --------------------------------------------------------------------------- evaluation


def ranks_of(index: DescriptionIndex, queries: list[dict], progress: bool = True) -> list[dict]:
    names = defaultdict(set)
    for i, r in enumerate(index.records):
        names[r.name].add(i)
    out = []
    for n, q in enumerate(queries):
        res = index.signal_scores(q["query"], SIGNALS)
        out.append({"scores": res["scores"], "contradicted": res["contradicted"], "relevant": names[q["name"]]})
        if progress and n % 100 == 0:
            print(f"  {n}/{len(queries)} queries", file=sys.stderr)
    return out


def rank_in(score: np.ndarray, relevant: set[int], pool: int = 100) -> int | None:
    positive = np.flatnonzero(score > 0)
    order = positive[np.argsort(-score[positive], kind="stable")][:pool]
    for r, t in enumerate(order):
        if int(t) in relevant:
            return r + 1
    return None


def metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {"recall@1": sum(1 for r in ranks if r == 1) / n, "recall@10": sum(1 for r in ranks if r and r <= 10) / n,
            "mrr": sum(1 / r for r in ranks if r) / n}


def evaluate(results: list[dict], weights: dict[str, float] | None = None, rrf_k: int = 60) -> dict[str, dict[str, float]]:
    table = {}
    for signal in SIGNALS:
        table[signal] = metrics([rank_in(r["scores"][signal], r["relevant"]) for r in results])
    fused = []
    for r in results:
        score, _ = DescriptionIndex.fuse(r["scores"], r["contradicted"], weights=weights, rrf_k=rrf_k)
        fused.append(rank_in(score, r["relevant"]))
    table["fusion"] = metrics(fused)
    return table


def tune(results: list[dict]) -> tuple[dict[str, float], int]:
    """Weights (every signal kept, > 0) and RRF constant maximising dev recall@10 (then MRR)."""
    grid = [0.5, 1.0, 2.0, 3.0]
    best, best_key = ({s: 1.0 for s in SIGNALS}, 60), (-1.0, -1.0)
    for rrf_k in (5, 10, 20, 60):
        for combo in itertools.product(grid, repeat=len(SIGNALS)):
            weights = dict(zip(SIGNALS, combo))
            m = evaluate(results, weights, rrf_k)["fusion"]
            key = (m["recall@10"], m["mrr"])
            if key > best_key:
                best, best_key = (weights, rrf_k), key
    return best


def embedding_cache(path: Path, model: str) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    data = np.load(path, allow_pickle=False)
    if str(data["model"]) != model:
        return {}
    return dict(zip(data["texts"].tolist(), data["vectors"]))


def save_cache(path: Path, model: str, index: DescriptionIndex) -> None:
    texts = [chunk_text(index.records[int(row[0])].text, row) for row in index.chunks]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, model=model, texts=np.array(texts), vectors=index.embeddings)


def table_md(title: str, table: dict[str, dict[str, float]]) -> str:
    lines = [f"{title}", "", "| signal | recall@1 | recall@10 | MRR |", "| --- | --- | --- | --- |"]
    for name, m in table.items():
        lines.append(f"| {name} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", choices=sorted(CORPORA))
    parser.add_argument("--queries", type=int, default=600, help="queries in all (half dev, half test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "herbaria" / "bench")
    parser.add_argument("--show", type=int, default=5, help="print this many example queries")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-tune", action="store_true", help="skip the dev-split weight search")
    args = parser.parse_args()
    t0 = time.time()
    records = read_descriptions(CORPORA[args.corpus])
    print(f"{args.corpus}: {len(records)} descriptions", file=sys.stderr)
    cache = args.cache / f"{args.corpus}-{args.text_model}.npz"
    known = embedding_cache(cache, args.text_model)
    index = DescriptionIndex.build(records, text_model=args.text_model, progress=True, known=known)
    save_cache(cache, args.text_model, index)
    t_build = time.time() - t0
    lang = "fr" if args.corpus == "gabon" else "en"
    queries = make_queries(records, args.queries, args.seed, markup=any(r.markup for r in records), lang=lang)
    half = len(queries) // 2
    dev, test = queries[:half], queries[half:]
    for q in queries[: args.show]:
        print(f"  query: {q['query']!r} -> {records[q['target']].taxon}", file=sys.stderr)
    t1 = time.time()
    dev_results = ranks_of(index, dev)
    test_results = ranks_of(index, test)
    t_search = (time.time() - t1) / max(len(queries), 1)
    from retrieval.morphology import DEFAULT_RRF_K, DEFAULT_WEIGHTS

    weights, rrf_k = tune(dev_results) if not args.no_tune else (DEFAULT_WEIGHTS, DEFAULT_RRF_K)
    equal = evaluate(test_results)
    tuned = evaluate(test_results, weights, rrf_k)
    shipped = evaluate(test_results, DEFAULT_WEIGHTS, DEFAULT_RRF_K)
    print(f"\n### {args.corpus}: {len(records)} descriptions, {len(test)} test queries in {lang} (seed {args.seed}), "
          f"text model {args.text_model}\n")
    print(table_md("Equal-weight RRF (k=60):", equal))
    print()
    print(table_md(f"Weighted RRF tuned on the {len(dev)} dev queries (k={rrf_k}, weights {weights}):",
                   {"fusion (tuned)": tuned["fusion"]}))
    print()
    print(table_md(f"Herbaria's default fusion (retrieval/morphology.py: k={DEFAULT_RRF_K}, weights {DEFAULT_WEIGHTS}):",
                   {"fusion (default)": shipped["fusion"]}))
    print(f"\nbuild {t_build:.0f} s, {1000 * t_search:.0f} ms per query (all three signals)")
    if args.json:
        args.json.write_text(json.dumps({"equal": equal, "tuned": tuned, "default": shipped, "weights": weights, "rrf_k": rrf_k,
                                         "queries": queries[:50]},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
