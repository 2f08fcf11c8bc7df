"""The geo-prior: which taxa a place makes likely, and how that reorders an identification.

"What is this, collected in Bahia?" should prefer plants that grow there. The image
gives p(taxon | image) over its candidates, the location model p(taxon | location);
they combine as p(taxon | image) * p(taxon | location)^w, renormalised over the
candidates (w = 0 ignores the place, w = 1 is Bayes with independent evidence; Mac
Aodha et al. 2019, iNaturalist's geomodel). Every function returns a plain dict whose
`how` line says what was combined, so the assistant can say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from location.train import LocationModel, load_location_model
from retrieval.collections import Collection
from retrieval.collections import find_country
from retrieval.errors import BadInput

ModelLike = LocationModel | str | Path | Collection


def _model(model: ModelLike) -> LocationModel:
    return model if isinstance(model, LocationModel) else load_location_model(model)


def _check_point(lat: float, lon: float) -> tuple[float, float]:
    lat, lon = float(lat), float(lon)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadInput(f"({lat}, {lon}) is not a point: latitude must be in -90..90 and longitude in -180..180")
    return lat, lon


def _trained_on(model: LocationModel) -> str:
    space = model.manifest.get("space") or {}
    training = model.manifest.get("training") or {}
    against = {"image-encoder": f"{space.get('encoder')} image vectors" if training.get("target") == "images"
               else f"{space.get('encoder')} taxon-name vectors",
               "text-encoder": f"{space.get('encoder') or space.get('name')} taxon-name vectors",
               "learned": "a learned taxon table"}.get(space.get("kind"), "taxon vectors")
    records = training.get("records")
    return f"the location encoder trained on {records:,} georeferenced records against {against}" if records \
        else f"the location encoder trained against {against}"


def _ranked(model: LocationModel, probs: np.ndarray, top: int | None) -> list[dict[str, Any]]:
    order = sorted(range(len(model.taxa)), key=lambda i: (-probs[i], model.taxa[i]))[: top or None]
    return [{"rank": r, "taxon": model.taxa[i], "probability": round(float(probs[i]), 6), "records": int(model.counts[i])}
            for r, i in enumerate(order, start=1)]


def location_prior(model: ModelLike, lat: float, lon: float, *, top: int | None = 10) -> dict[str, Any]:
    """p(taxon | point) for the model's taxa, most likely first."""
    m = _model(model)
    lat, lon = _check_point(lat, lon)
    probs = m.probabilities([lat], [lon])[0]
    return {"lat": lat, "lon": lon, "taxa": _ranked(m, probs, top), "n_taxa": len(m.taxa),
            "how": f"p(taxon | {lat:.4f}, {lon:.4f}) from {_trained_on(m)}"}


def country_prior(model: ModelLike, country: str, *, step: float = 0.5, top: int | None = 10) -> dict[str, Any]:
    """p(taxon | somewhere in a country): the prior averaged over grid points inside its outline."""
    m = _model(model)
    shape = find_country(country)
    if shape is None:
        raise BadInput(f"no outline known for country {country!r}; give a point instead")
    west, south, east, north = shape.bbox
    lats, lons = np.meshgrid(np.arange(south, north + step, step), np.arange(west, east + step, step), indexing="ij")
    lats, lons = lats.ravel(), lons.ravel()
    inside = shape.contains(lats, lons, tolerance_km=0.0)
    if not inside.any():  # a country smaller than the grid: its outline's vertices stand in
        points = np.concatenate(shape.rings)
        lats, lons, inside = points[:, 1], points[:, 0], np.ones(len(points), bool)
    probs = m.probabilities(lats[inside], lons[inside]).mean(axis=0)
    return {"country": shape.name, "points": int(inside.sum()), "taxa": _ranked(m, probs, top), "n_taxa": len(m.taxa),
            "how": f"p(taxon | {shape.name}) averaged over {int(inside.sum())} points {step}° apart, from {_trained_on(m)}"}


def _image_probabilities(scores: np.ndarray, kind: str, temperature: float) -> np.ndarray:
    if kind == "probability":
        if (scores < 0).any():
            raise BadInput("image probabilities cannot be negative; pass score_kind='similarity' for cosine scores")
        total = scores.sum()
        return scores / total if total > 0 else np.full(len(scores), 1 / len(scores))
    if kind != "similarity":
        raise BadInput(f"unknown score_kind {kind!r}; use similarity or probability")
    z = scores / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def geo_rerank(candidates: list[dict[str, Any]], model: ModelLike, *, lat: float | None = None, lon: float | None = None,
               country: str | None = None, weight: float = 1.0, score_kind: str = "similarity",
               temperature: float = 0.01) -> dict[str, Any]:
    """Reorder image candidates ({"taxon" or "scientificName", "score"}) by image score x location prior^weight.

    Similarity scores become p(taxon | image) by a softmax at `temperature` (0.01 is CLIP's logit
    scale of 100); a taxon the location model never saw gets the uniform prior 1/n_taxa."""
    if not candidates:
        return {"ranking": [], "changed": False, "how": "no image candidates to reorder", "weight": weight}
    if weight < 0:
        raise BadInput("the location weight must be 0 or more")
    m = _model(model)
    if country is not None and lat is None:
        prior = country_prior(m, country, top=None)
        where = prior["country"]
        by_taxon = {t["taxon"]: t["probability"] for t in prior["taxa"]}
        probs = np.array([by_taxon[t] for t in m.taxa])
    elif lat is not None and lon is not None:
        lat, lon = _check_point(lat, lon)
        where = f"({lat:.4f}, {lon:.4f})"
        probs = m.probabilities([lat], [lon])[0]
    else:
        raise BadInput("give a point (lat and lon) or a country for the geo-prior")
    names = [str(c.get("taxon") or c.get("scientificName") or "") for c in candidates]
    image_p = _image_probabilities(np.array([float(c["score"]) for c in candidates]), score_kind, temperature)
    indices = [m.taxon_index(n) for n in names]
    uniform = 1.0 / len(m.taxa)
    location_p = np.array([probs[i] if i is not None else uniform for i in indices])
    combined = np.exp(np.log(np.maximum(image_p, 1e-300)) + weight * np.log(np.maximum(location_p, 1e-300)))
    combined /= combined.sum()
    before = sorted(range(len(names)), key=lambda i: (-image_p[i], names[i]))
    after = sorted(range(len(names)), key=lambda i: (-combined[i], names[i]))
    rank_before = {i: r for r, i in enumerate(before, start=1)}
    ranking = [{**candidates[i], "rank": r, "rank_image_only": rank_before[i], "taxon": names[i],
                "image_probability": round(float(image_p[i]), 6),
                "location_probability": round(float(location_p[i]), 6) if indices[i] is not None else None,
                "probability": round(float(combined[i]), 6)} for r, i in enumerate(after, start=1)]
    unknown = [names[i] for i, idx in enumerate(indices) if idx is None]
    how = (f"ranked by p(taxon | image) x p(taxon | location)^{weight:g} at {where}, renormalised over "
           f"{len(names)} candidates; image probabilities from {score_kind} scores"
           + (f" (softmax at temperature {temperature:g})" if score_kind == "similarity" else "")
           + f"; location prior from {_trained_on(m)}")
    if unknown:
        how += f"; not in the location model (uniform prior 1/{len(m.taxa)}): {', '.join(unknown)}"
    return {"ranking": ranking, "changed": before != after, "weight": weight, "where": where, "how": how}


def score_grid(model: ModelLike, taxon: str, *, extent: tuple[float, float, float, float] = (-180, -90, 180, 90),
               step: float = 1.0, kind: str = "presence") -> dict[str, Any]:
    """A taxon's scores on a regular grid over `extent` (west, south, east, north): rows south to north.

    kind="presence": p(taxon | cell) against "no record here" too (low where nothing was collected);
    "probability": p(taxon | cell, a plant was collected there); "similarity": the raw cosine."""
    m = _model(model)
    index = m.taxon_index(taxon)
    if index is None:
        raise BadInput(f"{taxon!r} is not in the location model ({len(m.taxa)} taxa); train it with records of that taxon")
    west, south, east, north = (float(v) for v in extent)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise BadInput("extent must be west < east within -180..180 and south < north within -90..90")
    if step <= 0:
        raise BadInput("grid step must be positive")
    lats = np.arange(south + step / 2, north, step)
    lons = np.arange(west + step / 2, east, step)
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    if kind in ("presence", "probability"):
        score = m.presence if kind == "presence" else m.probabilities
        values = np.concatenate([score(grid_lat.ravel()[s:s + 20000], grid_lon.ravel()[s:s + 20000])[:, index]
                                 for s in range(0, grid_lat.size, 20000)])
    elif kind == "similarity":
        values = m.encoder.encode(grid_lat.ravel(), grid_lon.ravel()) @ m.taxon_vectors[index]
    else:
        raise BadInput(f"unknown grid kind {kind!r}; use presence, probability or similarity")
    return {"taxon": m.taxa[index], "grid": values.reshape(grid_lat.shape).astype(np.float32),
            "extent": (west, south, east, north), "step": step, "kind": kind, "how": f"{kind} from {_trained_on(m)}"}
