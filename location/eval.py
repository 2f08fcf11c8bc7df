"""Evaluation helpers for location models: occurrence readers, splits, baselines and metrics.

Used by bench/eval_location.py and the real-record test. The baselines are the ones a
location model has to beat to be worth its weights: the most frequent taxa everywhere
(frequency), a vote of the k nearest training records (k-NN), and, per taxon, a kernel
density of its training records (KDE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrieval.collections import EARTH_RADIUS_KM, flag_records
from retrieval.flora import normalize_name


def read_occurrences(folder: str | Path, *, taxon_from: str = "file", max_per_taxon: int | None = None,
                     seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every occurrence CSV under `folder` as (taxon, decimalLatitude, decimalLongitude, country, file),
    keeping only usable coordinates; returns the table and the coordinate-flag counts.

    taxon_from="file": the taxon is the file's species ('Family_Genus epithet_raw.csv' as in cncflora,
    or 'genus_epithet[_subsp_x].csv' as in sdmdl), the taxon the records were gathered for."""
    frames = []
    for path in sorted(Path(folder).rglob("*.csv")):
        if path.stat().st_size == 0:
            continue
        header = pd.read_csv(path, nrows=0, encoding_errors="replace").columns
        if not {"decimalLatitude", "decimalLongitude"} <= set(header):
            continue  # a metadata table beside the occurrences (sdmdl's crops.csv)
        wanted = [c for c in ("decimalLatitude", "decimalLongitude", "country", "gbifID", taxon_from) if c in header]
        frame = pd.read_csv(path, usecols=wanted, low_memory=False, encoding_errors="replace")
        if taxon_from == "file":
            stem = path.stem.removesuffix("_raw")
            name = stem.split("_", 1)[1] if stem[:1].isupper() and "_" in stem else stem.replace("_", " ").capitalize()
            name = name.removesuffix(" l")  # sdmdl's 'zea_mays_l': the author abbreviation L.
            frame["taxon"] = name
        else:
            frame["taxon"] = frame[taxon_from].fillna("").astype(str).map(normalize_name)
        frame["file"] = path.stem
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if "gbifID" in table.columns:
        table = table.drop_duplicates(["taxon", "gbifID"])
    if "country" not in table.columns:
        table["country"] = ""
    flags = flag_records(table)
    counts = {"records": int(len(table)), "with_coordinates": int(flags["has_coordinates"].sum()),
              "usable": int(flags["usable"].sum())}
    for flag in ("zero", "swapped", "sign_inverted", "outside_country", "low_precision"):
        counts[flag] = int(flags["flags"].map(lambda f, flag=flag: flag in f).sum())
    table = table[flags["usable"].to_numpy() & (table["taxon"] != "").to_numpy()]
    if max_per_taxon:
        table = table.sample(frac=1.0, random_state=seed).groupby("taxon").head(max_per_taxon)
    table = table[["taxon", "decimalLatitude", "decimalLongitude", "country", "file"]].reset_index(drop=True)
    counts["kept"] = int(len(table))
    counts["taxa"] = int(table["taxon"].nunique())
    return table, counts


def split_by_record(n: int, *, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean test mask over n records, drawn at random."""
    rng = np.random.default_rng(seed)
    test = np.zeros(n, dtype=bool)
    test[rng.choice(n, size=int(round(test_fraction * n)), replace=False)] = True
    return test


def split_by_region(lat: np.ndarray, lon: np.ndarray, *, block_degrees: float = 5.0, test_fraction: float = 0.2,
                    seed: int = 0) -> np.ndarray:
    """Boolean test mask: every record in a held-out block_degrees x block_degrees cell is a test record,
    so the model is judged where it saw no training record at all."""
    rows = np.floor(np.asarray(lat) / block_degrees).astype(int)
    cells = rows * 10_000 + np.floor(np.asarray(lon) / block_degrees).astype(int)
    unique = np.unique(cells)
    rng = np.random.default_rng(seed)
    held = rng.choice(unique, size=max(1, int(round(test_fraction * len(unique)))), replace=False)
    return np.isin(cells, held)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Share of rows whose true label is among the k best scores (ties counted against the model)."""
    true = scores[np.arange(len(labels)), labels][:, None]
    better = (scores > true).sum(axis=1) + (scores == true).sum(axis=1) - 1  # rank - 1, pessimistic on ties
    return {f"top{k}": round(float((better < k).mean()), 4) for k in ks}


def frequency_scores(train_labels: np.ndarray, n_taxa: int, n_test: int) -> np.ndarray:
    counts = np.bincount(train_labels, minlength=n_taxa).astype(float)
    return np.broadcast_to(counts, (n_test, n_taxa))


def _radians(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.radians(np.stack([lat, lon], axis=1))


def knn_scores(train_lat: np.ndarray, train_lon: np.ndarray, train_labels: np.ndarray, test_lat: np.ndarray,
               test_lon: np.ndarray, n_taxa: int, *, k: int = 25) -> np.ndarray:
    """Votes of the k nearest training records (great-circle), ties broken by global frequency."""
    from sklearn.neighbors import BallTree

    tree = BallTree(_radians(train_lat, train_lon), metric="haversine")
    _, idx = tree.query(_radians(test_lat, test_lon), k=min(k, len(train_lat)))
    scores = np.zeros((len(test_lat), n_taxa))
    np.add.at(scores, (np.repeat(np.arange(len(test_lat)), idx.shape[1]), train_labels[idx].ravel()), 1.0)
    return scores + 1e-6 * np.bincount(train_labels, minlength=n_taxa) / len(train_labels)


def kde_scores(train_lat: np.ndarray, train_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
               bandwidth_km: float) -> np.ndarray:
    """Log density at (lat, lon) of a Gaussian kernel density over the training points (great-circle)."""
    from sklearn.neighbors import KernelDensity

    kde = KernelDensity(bandwidth=bandwidth_km / EARTH_RADIUS_KM, metric="haversine", kernel="gaussian")
    kde.fit(_radians(train_lat, train_lon))
    return kde.score_samples(_radians(lat, lon))


def auc(presence: np.ndarray, background: np.ndarray) -> float:
    """Probability that a presence outscores a background point (ties count half): the ROC AUC."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([presence, background]))
    n_p, n_b = len(presence), len(background)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_b))


def random_land_points(n: int, extent: tuple[float, float, float, float], *, seed: int = 0) -> np.ndarray:
    """(n, 2) (lat, lon) uniform on the sphere within extent (west, south, east, north), on land."""
    from location.range_map import land_mask

    mask = land_mask()
    rng = np.random.default_rng(seed)
    west, south, east, north = extent
    out: list[np.ndarray] = []
    total = 0
    while total < n:
        z = rng.uniform(np.sin(np.radians(south)), np.sin(np.radians(north)), 4 * n)
        lat, lon = np.degrees(np.arcsin(z)), rng.uniform(west, east, 4 * n)
        rows = np.clip(((lat + 90) / 180 * mask.shape[0]).astype(int), 0, mask.shape[0] - 1)
        cols = np.clip(((lon + 180) / 360 * mask.shape[1]).astype(int), 0, mask.shape[1] - 1)
        keep = mask[rows, cols] == 1
        out.append(np.stack([lat[keep], lon[keep]], axis=1))
        total += int(keep.sum())
    return np.concatenate(out)[:n]
