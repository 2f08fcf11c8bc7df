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

A second style copies phrases verbatim from the flora (the opening words of 2-3 clauses), the way a
user pastes a description. For Flora Malesiana the queries are split by volume: fusion weights are
tuned on volumes 12, 13 and 14 and every figure is reported on the others (16, 17, 18, 20, Series II),
never seen in tuning; other corpora split their queries in halves. Ties count as broken at random
(expected recall), so file order cannot change a figure. Embeddings are cached by chunk text.

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
from retrieval.flora import DescriptionIndex, SIGNALS, chunk_text  # noqa: E402
from retrieval.flora import split_sentences, tokenize  # noqa: E402
from retrieval.flora import fold, vocabulary  # noqa: E402

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
    items = tokenize(record.text, 0, len(record.text), record.language, False, voc)
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
        items = tokenize(record.text, s, e, record.language, False, voc)
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


def make_verbatim_queries(records: list[TaxonDescription], targets: list[int], n: int, seed: int) -> list[dict]:
    """Phrases copied from the flora: the opening words (3 to 6) of 2 or 3 clauses of the target's
    description, from different sentences where it has them, joined the way a user pastes them."""
    from retrieval.flora import chunks_of

    rng = random.Random(seed + 1)
    queries = []
    for i in targets:
        record = records[i]
        clauses = []
        for row in chunks_of(record):
            words = record.text[row[0]:row[1]].replace(";", " ").replace(":", " ").split()
            if len(words) >= 3 and any(c.isalpha() for c in words[0]):
                clauses.append((row[2], words))
        if len(clauses) < 2:
            continue
        sentences = sorted({s for s, _ in clauses})
        chosen_sentences = rng.sample(sentences, min(3, len(sentences)))
        picked = [rng.choice([w for s, w in clauses if s == sent]) for sent in chosen_sentences]
        if len(picked) < 2:
            picked = rng.sample([w for _, w in clauses], min(3, len(clauses)))
        text = ", ".join(" ".join(words[:rng.randint(3, 6)]).strip(",.") for words in picked)
        queries.append({"target": i, "name": record.name, "query": text, "style": "verbatim"})
        if len(queries) >= n:
            break
    return queries


HELD_OUT_VOLUMES = {"malesiana": r"Volume (16|17|18|20)\b|Series II\b"}


def split_by_volume(records: list[TaxonDescription], corpus: str) -> tuple[set[int], set[int]] | None:
    """(tuning taxa, held-out taxa) by flora volume: held-out volumes are never used to choose the fusion."""
    import re

    pattern = HELD_OUT_VOLUMES.get(corpus)
    if not pattern:
        return None
    held = {i for i, r in enumerate(records) if re.search(pattern, r.source or "")}
    return set(range(len(records))) - held, held


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


def rank_in(score: np.ndarray, relevant: set[int], pool: int = 100) -> tuple[int, int] | None:
    """(taxa scored strictly higher, taxa tied with the best relevant one, itself included), or None
    when no relevant taxon is retrieved within the pool; metrics average over every order of the tie,
    so the order of the files cannot change a figure."""
    rel = [t for t in relevant if score[t] > 0]
    if not rel:
        return None
    best = max(float(score[t]) for t in rel)
    higher = int(np.sum(score > best))
    tied = int(np.sum(score == best))
    if higher >= pool:
        return None
    return higher, tied


def metrics(ranks: list[tuple[int, int] | None]) -> dict[str, float]:
    """Expected recall@1, recall@10 and MRR when ties are broken at random."""
    n = max(len(ranks), 1)
    r1 = r10 = mrr = 0.0
    for r in ranks:
        if r is None:
            continue
        higher, tied = r
        positions = range(higher + 1, higher + tied + 1)
        r1 += sum(1 for p in positions if p == 1) / tied
        r10 += sum(1 for p in positions if p <= 10) / tied
        mrr += sum(1 / p for p in positions) / tied
    return {"recall@1": r1 / n, "recall@10": r10 / n, "mrr": mrr / n}


EQUAL = {s: 1.0 for s in SIGNALS}


def evaluate(results: list[dict], weights: dict[str, float] | None = None, rrf_k: int | None = None,
             ties: str | None = None) -> dict[str, dict[str, float]]:
    """Each signal alone and the fusion (`weights`/`rrf_k`/`ties` None: Herbaria's defaults)."""
    from retrieval.flora.morphology.fusion import DEFAULT_TIES

    table = {}
    for signal in SIGNALS:
        table[signal] = metrics([rank_in(r["scores"][signal], r["relevant"]) for r in results])
    fused = []
    for r in results:
        score, _ = DescriptionIndex.fuse(r["scores"], r["contradicted"], weights=weights, rrf_k=rrf_k,
                                         ties=ties or DEFAULT_TIES)
        fused.append(rank_in(score, r["relevant"]))
    table["fusion"] = metrics(fused)
    return table


def margin(table: dict[str, dict[str, float]]) -> float:
    """Fusion recall@10 minus the best single signal's."""
    return table["fusion"]["recall@10"] - max(table[s]["recall@10"] for s in SIGNALS)


def tune(by_style: dict[str, list[dict]]) -> tuple[dict[str, float], int, str]:
    """Weights, RRF constant and tie rule maximising, on the tuning volumes, the worst margin over the
    query styles of fusion recall@10 over the best single signal (then mean recall@10, then MRR).
    Each signal's ranks are computed once per tie rule; the grid only re-adds them."""
    from retrieval.flora.morphology.fusion import competition_ranks

    grid = [0.5, 1.0, 2.0, 3.0]
    singles = {style: evaluate(results) for style, results in by_style.items()}
    best_single = {style: max(t[s]["recall@10"] for s in SIGNALS) for style, t in singles.items()}
    best, best_key = (EQUAL, 10, "min"), (-9.0, -9.0, -9.0)
    for ties in ("min", "mean"):
        prepared = {style: [{name: competition_ranks(score, 100, ties) for name, score in r["scores"].items()}
                            for r in results] for style, results in by_style.items()}
        for rrf_k in (5, 10, 20, 60):
            for combo in itertools.product(grid, repeat=len(SIGNALS)):
                weights = dict(zip(SIGNALS, combo))
                r10s, mrrs, margins = [], [], []
                for style, results in by_style.items():
                    ranks = []
                    for r, per_signal in zip(results, prepared[style]):
                        fused = np.zeros(len(r["contradicted"]))
                        for name, (order, shared) in per_signal.items():
                            fused[order] += weights[name] / (rrf_k + shared)
                        fused[r["contradicted"]] *= 1e-3
                        ranks.append(rank_in(fused, r["relevant"]))
                    m = metrics(ranks)
                    r10s.append(m["recall@10"])
                    mrrs.append(m["mrr"])
                    margins.append(m["recall@10"] - best_single[style])
                key = (round(min(margins), 6), float(np.mean(r10s)), float(np.mean(mrrs)))
                if key > best_key:
                    best, best_key = (weights, rrf_k, ties), key
    print(f"tuning: worst margin over the best single signal {best_key[0]:+.3f}, mean recall@10 {best_key[1]:.3f}",
          file=sys.stderr)
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
    parser.add_argument("--queries", type=int, default=600, help="queries per style in all (tuning + held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "herbaria" / "bench")
    parser.add_argument("--show", type=int, default=3, help="print this many example queries per style")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--taxa", type=int, default=0,
                        help="index a seeded random sample of this many descriptions (0: all), for short runs")
    parser.add_argument("--no-tune", action="store_true", help="skip the weight search on the tuning volumes")
    args = parser.parse_args()
    t0 = time.time()
    records = read_descriptions(CORPORA[args.corpus])
    if args.taxa and args.taxa < len(records):
        records = [records[i] for i in sorted(random.Random(args.seed).sample(range(len(records)), args.taxa))]
    print(f"{args.corpus}: {len(records)} descriptions", file=sys.stderr)
    cache = args.cache / f"{args.corpus}-{args.text_model}-{len(records)}.npz"
    known = embedding_cache(cache, args.text_model)
    index = DescriptionIndex.build(records, text_model=args.text_model, progress=True, known=known)
    save_cache(cache, args.text_model, index)
    t_build = time.time() - t0
    lang = "fr" if args.corpus == "gabon" else "en"
    paraphrased = make_queries(records, args.queries, args.seed, markup=any(r.markup for r in records), lang=lang)
    for q in paraphrased:
        q["style"] = "paraphrased"
    rng = random.Random(args.seed)
    targets = [i for i, r in enumerate(records) if r.rank not in ("family", "genus", "tribe", "")]
    rng.shuffle(targets)
    verbatim = make_verbatim_queries(records, targets, args.queries, args.seed)
    split = split_by_volume(records, args.corpus)
    by_style = {"paraphrased": paraphrased, "verbatim": verbatim}
    dev: dict[str, list[dict]] = {}
    test: dict[str, list[dict]] = {}
    for style, queries in by_style.items():
        if split:
            dev[style] = [q for q in queries if q["target"] in split[0]]
            test[style] = [q for q in queries if q["target"] in split[1]]
        else:
            dev[style], test[style] = queries[:len(queries) // 2], queries[len(queries) // 2:]
        for q in queries[: args.show]:
            print(f"  {style}: {q['query']!r} -> {records[q['target']].taxon}", file=sys.stderr)
    t1 = time.time()
    dev_results = {style: ranks_of(index, qs) for style, qs in dev.items()}
    test_results = {style: ranks_of(index, qs) for style, qs in test.items()}
    n_queries = sum(len(qs) for qs in [*dev.values(), *test.values()])
    t_search = (time.time() - t1) / max(n_queries, 1)
    from retrieval.flora.morphology.fusion import DEFAULT_RRF_K, DEFAULT_TIES, DEFAULT_WEIGHTS

    weights, rrf_k, ties = tune(dev_results) if not args.no_tune else (DEFAULT_WEIGHTS, DEFAULT_RRF_K, DEFAULT_TIES)
    held = "held-out volumes" if split else "test half"
    print(f"\n### {args.corpus}: {len(records)} descriptions, queries in {lang} (seed {args.seed}), text model "
          f"{args.text_model}; tuned on {'the tuning volumes' if split else 'the dev half'}, figures on the {held}\n")
    out: dict = {"tuned": {"weights": weights, "rrf_k": rrf_k, "ties": ties}}
    for style, results in test_results.items():
        table = evaluate(results)
        table["fusion (equal, k=10)"] = evaluate(results, EQUAL, 10)["fusion"]
        table[f"fusion (tuned: k={rrf_k}, ties {ties}, {weights})"] = evaluate(results, weights, rrf_k, ties)["fusion"]
        table["fusion (Herbaria default)"] = table.pop("fusion")
        print(table_md(f"{style}, {len(results)} queries on the {held} "
                       f"(default k={DEFAULT_RRF_K}, ties {DEFAULT_TIES}, weights {DEFAULT_WEIGHTS}):", table))
        print()
        out[style] = table
    print(f"build {t_build:.0f} s, {1000 * t_search:.0f} ms per query (all three signals)")
    if args.json:
        args.json.write_text(json.dumps({**out, "queries": {s: q[:30] for s, q in by_style.items()}}, indent=1, default=str))


if __name__ == "__main__":
    main()
