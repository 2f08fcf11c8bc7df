"""Location as a modality: where a plant grows, a geo-prior for identification, and range maps.

This package owns the location encoder (GeoCLIP-style, `encoder.py`), its training
against a collection's image vectors or taxon vectors (`train.py`, saved in
COLLECTION/location/ with a manifest naming the space it was trained against), the
geo-prior over taxa and its combination with image scores (`prior.py`), offline range
maps (`range_map.py`) and the evaluation helpers the benchmark uses (`eval.py`).
It reads retrieval/ (collections, the image index, coordinate flags); nothing in
retrieval/ imports it.

Public API (plain functions, keyword options, plain dicts back):

    train_location_encoder(collection, target="auto")    -> training summary
    load_location_model(collection)                       -> LocationModel (refused if the image index changed encoder)
    location_prior(model, lat, lon, top=10)               -> {"taxa": [...], "how": ...}
    country_prior(model, "Brazil")                        -> the same, averaged over the country
    geo_rerank(candidates, model, lat=..., lon=...)       -> image ranking x location prior, with "how"
    score_grid(model, taxon, extent=..., step=...)        -> a taxon's scores on a grid
    render_map(out, scores=..., extent=..., records=...)  -> PNG map with the records on top
    taxon_range_map(collection, taxon, out)               -> "where does this grow?" in one call
"""

from location.prior import country_prior, geo_rerank, location_prior, score_grid
from location.range_map import render_map, taxon_range_map
from location.train import LocationModel, fit_location_encoder, load_location_model, train_location_encoder

__all__ = ["LocationModel", "country_prior", "fit_location_encoder", "geo_rerank", "load_location_model",
           "location_prior", "render_map", "score_grid", "taxon_range_map", "train_location_encoder"]
