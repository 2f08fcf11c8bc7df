"""Location as a modality, measured on real occurrence records (../shared/data/occurrences).

    .venv/bin/python bench/eval_location.py [--datasets cncflora sdmdl] [--targets learned minilm] [--json out.json]

For each data set and each split (by record: 20% of records at random; by region: every
record in 20% of the occupied grid cells, 2° cells for cncflora's Brazil, 5° for sdmdl's
world), the location encoder is trained on the training part against taxon vectors
(no images in these sets): `learned` (a per-taxon embedding table learned with it) and/or
`minilm` (frozen all-MiniLM-L6-v2 vectors of the taxon names). Reported:

(a) species top-1 / top-10 from the location alone, against the most frequent taxa
    (frequency) and a vote of the k nearest training records (k-NN with k = 1, and with k
    chosen on a validation part of the training records among 1, 5, 25, 100);
(b) per taxon with >= 20 test records, presence vs background ROC AUC against a Gaussian
    kernel density of the taxon's training records (bandwidth chosen on validation among
    25-400 km), with two backgrounds: the test records of the other taxa (target group, same
    sampling bias; the model scores p(taxon | place, a record there)) and random land points in
    the data's box (the model scores p(taxon | place) against its "no record here" class).

The encoder's training jitter ((50 km, half the points) or (200 km, all of them)) is chosen
on the same validation part. Only records whose coordinates pass retrieval/collections/coordinates.py are used. Torch runs on one
thread (the machine is shared); the run prints `uptime` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from location.eval import (auc, frequency_scores, kde_scores, knn_scores, random_land_points, read_occurrences,  # noqa: E402
                           split_by_record, split_by_region, topk_accuracy)
from location.train import fit_location_encoder  # noqa: E402

SHARED = Path(os.environ.get("HERBARIA_SHARED_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
DATASETS = {"cncflora": {"max_per_taxon": None, "block": 2.0}, "sdmdl": {"max_per_taxon": 2000, "block": 5.0}}
KS = (1, 5, 25, 100)
BANDWIDTHS_KM = (25, 50, 100, 200, 400)
JITTERS = ((50.0, 0.5), (200.0, 1.0))  # the default, and a smoother one for data spread over continents
MIN_TEST = 20
BACKGROUND = 2000


def _split(kind: str, lat: np.ndarray, lon: np.ndarray, block: float, seed: int) -> np.ndarray:
    if kind == "record":
        return split_by_record(len(lat), seed=seed)
    return split_by_region(lat, lon, block_degrees=block, seed=seed)


def _best_k(lat, lon, y, n_taxa, kind, block) -> int:
    val = _split(kind, lat, lon, block, seed=1)
    scores = {k: topk_accuracy(knn_scores(lat[~val], lon[~val], y[~val], lat[val], lon[val], n_taxa, k=k), y[val]) for k in KS}
    return max(KS, key=lambda k: scores[k]["top1"] + scores[k]["top10"])


def _best_jitter(lat, lon, taxa_names, all_taxa, y, kind, block, seed) -> tuple[float, float]:
    """(jitter_km, fraction) for the encoder, chosen on validation like k and the KDE bandwidth."""
    val = _split(kind, lat, lon, block, seed=1)
    results = {}
    for jitter in JITTERS:
        model, _ = fit_location_encoder(lat[~val], lon[~val], taxa_names[~val], taxon_names=all_taxa, target="learned", dim=64,
                                        epochs=10, seed=seed, jitter_km=jitter[0], jitter_fraction=jitter[1])
        accuracy = topk_accuracy(model.logits(lat[val], lon[val]), y[val])
        results[jitter] = accuracy["top1"] + accuracy["top10"]
    return max(JITTERS, key=lambda j: results[j])


def _best_bandwidth(lat, lon, y, taxa_idx, kind, block, background) -> float:
    val = _split(kind, lat, lon, block, seed=1)
    results = {}
    for bw in BANDWIDTHS_KM:
        aucs = []
        for t in taxa_idx:
            tr, te = (~val) & (y == t), val & (y == t)
            if tr.sum() < 5 or te.sum() < 5:
                continue
            bg = background(val & (y != t))
            aucs.append(auc(kde_scores(lat[tr], lon[tr], lat[te], lon[te], bandwidth_km=bw),
                            kde_scores(lat[tr], lon[tr], bg[:, 0], bg[:, 1], bandwidth_km=bw)))
        results[bw] = np.mean(aucs) if aucs else 0.0
    return max(BANDWIDTHS_KM, key=lambda b: results[b])


def evaluate(name: str, targets: list[str], epochs: int, seed: int = 0) -> list[dict]:
    spec = DATASETS[name]
    table, counts = read_occurrences(SHARED / "occurrences" / name, max_per_taxon=spec["max_per_taxon"], seed=seed)
    print(f"{name}: {counts}", flush=True)
    taxa = sorted(table["taxon"].unique())
    position = {t: i for i, t in enumerate(taxa)}
    y = table["taxon"].map(position).to_numpy()
    lat, lon = table["decimalLatitude"].to_numpy(float), table["decimalLongitude"].to_numpy(float)
    extent = (lon.min(), lat.min(), lon.max(), lat.max())
    land = random_land_points(BACKGROUND, extent, seed=seed)
    text_vectors = None
    if "minilm" in targets:
        from retrieval.flora import create_text_encoder

        text_vectors = create_text_encoder("minilm").encode(taxa)
    rows = []
    rng = np.random.default_rng(seed)
    for kind in ("record", "region"):
        test = _split(kind, lat, lon, spec["block"], seed)
        tr = ~test
        k = _best_k(lat[tr], lon[tr], y[tr], len(taxa), kind, spec["block"])
        base = {"dataset": name, "split": kind, "train": int(tr.sum()), "test": int(test.sum()), "taxa": len(taxa)}
        for kk in sorted({1, k}):  # k=1 too: duplicate specimens at one spot make it the top-1 to beat
            knn = knn_scores(lat[tr], lon[tr], y[tr], lat[test], lon[test], len(taxa), k=kk)
            label = f"k-NN records (k={kk}{', chosen on validation' if kk == k else ''})"
            rows.append({**base, "method": label, **topk_accuracy(knn, y[test])})
        frequency = frequency_scores(y[tr], len(taxa), int(test.sum()))
        rows.append({**base, "method": "frequency", **topk_accuracy(frequency, y[test])})
        evaluated = [t for t in range(len(taxa)) if (test & (y == t)).sum() >= MIN_TEST and (tr & (y == t)).sum() >= 5]

        def group_background(mask: np.ndarray) -> np.ndarray:
            idx = np.flatnonzero(mask)
            idx = rng.choice(idx, size=min(BACKGROUND, len(idx)), replace=False)
            return np.stack([lat[idx], lon[idx]], axis=1)

        sub_lat, sub_lon, sub_y = lat[tr], lon[tr], y[tr]
        bw = _best_bandwidth(sub_lat, sub_lon, sub_y, evaluated, kind, spec["block"],
                             lambda m: np.stack([sub_lat[m], sub_lon[m]], axis=1)[:BACKGROUND])
        kde = {"group": [], "land": []}
        backgrounds = {}
        for t in evaluated:
            pres, train_t = test & (y == t), tr & (y == t)
            backgrounds[t] = group_background(test & (y != t))
            p_kde = kde_scores(lat[train_t], lon[train_t], lat[pres], lon[pres], bandwidth_km=bw)
            for bg_name, bg in (("group", backgrounds[t]), ("land", land)):
                kde[bg_name].append(auc(p_kde, kde_scores(lat[train_t], lon[train_t], bg[:, 0], bg[:, 1], bandwidth_km=bw)))
        rows.append({**base, "method": f"KDE per taxon ({bw} km)", "auc_taxa": len(evaluated),
                     "auc_group": round(float(np.mean(kde["group"])), 4), "auc_land": round(float(np.mean(kde["land"])), 4)})
        names = table["taxon"].to_numpy()
        jitter_km, jitter_fraction = _best_jitter(lat[tr], lon[tr], names[tr], taxa, y[tr], kind, spec["block"], seed)
        for target in targets:
            start = time.perf_counter()
            fit_kw = dict(target="learned", dim=64) if target == "learned" else dict(target="taxa", taxon_vectors=text_vectors)
            model, report = fit_location_encoder(lat[tr], lon[tr], names[tr], taxon_names=taxa, epochs=epochs, seed=seed,
                                                 jitter_km=jitter_km, jitter_fraction=jitter_fraction, **fit_kw)
            probs = model.probabilities(lat[test], lon[test])
            presence = model.presence(lat[test], lon[test])
            y_test = y[test]

            def test_rows_of(t: int) -> np.ndarray:
                return y_test == t
            land_presence = model.presence(land[:, 0], land[:, 1])
            aucs = {"group": [], "land": []}
            wins = {"group": 0, "land": 0}
            for j, t in enumerate(evaluated):
                pres = test_rows_of(t)
                bg_group = model.probabilities(backgrounds[t][:, 0], backgrounds[t][:, 1])[:, t]
                for bg_name, p, bg in (("group", probs[pres, t], bg_group), ("land", presence[pres, t], land_presence[:, t])):
                    aucs[bg_name].append(auc(p, bg))
                    wins[bg_name] += aucs[bg_name][-1] > kde[bg_name][j]
            label = ("location encoder, learned taxon table" if target == "learned" else
                     "location encoder, MiniLM taxon names") + f" (jitter {jitter_km:g} km x {jitter_fraction:g})"
            rows.append({**base, "method": label, **topk_accuracy(model.logits(lat[test], lon[test]), y[test]),
                         "auc_taxa": len(evaluated), "auc_group": round(float(np.mean(aucs["group"])), 4),
                         "auc_land": round(float(np.mean(aucs["land"])), 4),
                         "beats_kde_group": int(wins["group"]), "beats_kde_land": int(wins["land"]),
                         "train_seconds": report["seconds"], "epochs": report["epochs"],
                         "seconds": round(time.perf_counter() - start, 1)})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| data | split | method | top-1 | top-10 | AUC vs other taxa | AUC vs land | taxa for AUC | model beats KDE on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        beats = f"{r['beats_kde_group']} / {r['beats_kde_land']} of {r['auc_taxa']}" if "beats_kde_group" in r else ""
        lines.append(f"| {r['dataset']} ({r['train']:,} train / {r['test']:,} test, {r['taxa']} taxa) | {r['split']} | "
                     f"{r['method']} | {r.get('top1', '')} | {r.get('top10', '')} | {r.get('auc_group', '')} | "
                     f"{r.get('auc_land', '')} | {r.get('auc_taxa', '')} | {beats} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--targets", nargs="+", default=["learned", "minilm"], choices=["learned", "minilm"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (SHARED / "occurrences").is_dir():
        sys.exit(f"no occurrence data at {SHARED / 'occurrences'}: clone ../shared beside the repo")
    torch.set_num_threads(args.threads)
    print("before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    start = time.perf_counter()
    rows = [row for name in args.datasets for row in evaluate(name, args.targets, args.epochs)]
    print("after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"total {time.perf_counter() - start:.0f} s\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
