"""Stage: train a collection's location encoder and keep it beside the image index, with a manifest.

The encoder learns where taxa grow from the collection's georeferenced specimens. It is
pulled towards one of three target spaces, the image tower staying frozen:

- `images`: each specimen's own vector from the FAISS image index (GeoCLIP/TaxaBind's
  contrastive objective, in-batch InfoNCE both ways); a taxon's vector is then the mean
  of its specimens' image vectors;
- `taxa`: fixed taxon-name text vectors, either the image encoder's own text tower
  (`taxon_space="clip"`: the same shared space as the images) or a sentence-transformers
  preset (`"minilm"`), with a softmax over every taxon;
- `learned`: a taxon embedding table learned together with the encoder, for a
  collection with no image index and no text model.

`target="auto"` takes images when at least half the usable records (and `min_images`)
have an image vector, else taxa. Records whose coordinates are flagged
(retrieval/collections/coordinates.py) are never used. As with the image index, a location model
trained against one image encoder is refused once the index is built by another.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from location.encoder import DEFAULT_PRESET, LocationEncoder, create_location_encoder
from retrieval.collections import Collection
from retrieval.collections import flag_records
from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.vectors import SpecimenIndex, index_dir, sha256_file
from retrieval.flora import normalize_name

FOLDER = "location"
WEIGHTS_FILE = "location_encoder.pt"
TAXA_FILE = "taxa.npz"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
MAX_LOGIT_SCALE = 100.0


@dataclass
class LocationModel:
    """A trained encoder with the taxon vectors it scores against; `manifest` says what space they live in."""

    encoder: LocationEncoder
    taxa: list[str]
    taxon_vectors: np.ndarray
    counts: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    background_vector: np.ndarray | None = None  # the "no record here" class, when trained with one

    def logits(self, lat: Any, lon: Any) -> np.ndarray:
        """(points, taxa) scaled cosine similarities."""
        scale = float(self.encoder.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        return scale * self.encoder.encode(lat, lon) @ self.taxon_vectors.T

    def probabilities(self, lat: Any, lon: Any) -> np.ndarray:
        """(points, taxa) p(taxon | location, a plant was collected there): a softmax over the model's taxa."""
        return _softmax(self.logits(lat, lon))

    def presence(self, lat: Any, lon: Any) -> np.ndarray:
        """(points, taxa) p(taxon | location) against "no record here" as well: low where nothing was
        collected, so it maps where a taxon grows; the same as `probabilities` without a background class."""
        if self.background_vector is None:
            return self.probabilities(lat, lon)
        scale = float(self.encoder.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        z = scale * self.encoder.encode(lat, lon) @ np.vstack([self.taxon_vectors, self.background_vector]).T
        return _softmax(z)[:, :-1]

    def taxon_index(self, name: str) -> int | None:
        """Row of a taxon, by its name as trained or its normalised name (authorship dropped)."""
        if not hasattr(self, "_positions"):
            self._positions = {t: i for i, t in enumerate(self.taxa)}
        text = str(name).strip()
        found = self._positions.get(text)
        return found if found is not None else self._positions.get(normalize_name(text))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _normalise_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def fit_location_encoder(lat: np.ndarray, lon: np.ndarray, taxa: list[str] | np.ndarray, *, target: str = "learned",
                         record_vectors: np.ndarray | None = None, taxon_vectors: np.ndarray | None = None,
                         taxon_names: list[str] | None = None, dim: int = 64, preset: str = DEFAULT_PRESET,
                         epochs: int = 20, batch_size: int = 512, lr: float = 2e-3, weight_decay: float = 1e-5,
                         jitter_km: float = 50.0, jitter_fraction: float = 0.5, sigmas: tuple[float, ...] | None = None,
                         background: float = 0.25, seed: int = 0,
                         max_seconds: float | None = None) -> tuple[LocationModel, dict[str, Any]]:
    """Train on arrays (degrees, taxon per record); no I/O. Returns the model and a training report.

    target="images" needs `record_vectors` (one unit vector per record); "taxa" needs `taxon_vectors`
    with their `taxon_names` (rows in that order); "learned" makes a `dim`-wide taxon table.
    At every step a `jitter_fraction` of the points moves by Gaussian noise of `jitter_km` (a record
    stands for its surroundings) while the rest stay put: measured on cncflora, moving half by 50 km keeps
    most of the sharpness where records are dense and generalises to held-out regions (BENCHMARKS.md).
    With `background` > 0 (taxa and learned targets), each batch also holds that many random points per
    record, drawn uniformly over the records' box, as an extra "no record here" class (`presence`)."""
    lat, lon = np.asarray(lat, np.float32), np.asarray(lon, np.float32)
    labels_text = np.asarray(taxa, dtype=object)
    if not (len(lat) == len(lon) == len(labels_text)) or len(lat) == 0:
        raise BadInput("training needs as many latitudes, longitudes and taxa as records, and at least one record")
    names = list(taxon_names) if taxon_names is not None else sorted(set(labels_text.tolist()))
    position = {name: i for i, name in enumerate(names)}
    missing = sorted(set(labels_text.tolist()) - set(position))
    if missing:
        raise BadInput(f"{len(missing)} taxa have no taxon vector, e.g. {missing[0]!r}")
    labels = np.fromiter((position[t] for t in labels_text), dtype=np.int64, count=len(labels_text))
    counts = np.bincount(labels, minlength=len(names))
    torch.manual_seed(seed)
    if target == "images":
        if record_vectors is None or len(record_vectors) != len(lat):
            raise BadInput("target='images' needs one image vector per record")
        fixed = torch.as_tensor(_normalise_rows(np.asarray(record_vectors, np.float32)))
        sums = np.zeros((len(names), fixed.shape[1]), np.float32)
        np.add.at(sums, labels, fixed.numpy())
        table = torch.as_tensor(_normalise_rows(sums))
    elif target == "taxa":
        if taxon_vectors is None or len(taxon_vectors) != len(names):
            raise BadInput("target='taxa' needs one taxon vector per taxon name")
        table = torch.as_tensor(_normalise_rows(np.asarray(taxon_vectors, np.float32)))
    elif target == "learned":
        table = nn.Parameter(nn.functional.normalize(torch.randn(len(names), dim), dim=-1))
    else:
        raise BadInput(f"unknown target {target!r}; use images, taxa or learned")
    encoder = create_location_encoder(int(table.shape[1]), preset=preset, seed=seed,
                                      **({"sigmas": tuple(sigmas)} if sigmas else {}))
    params = list(encoder.parameters()) + ([table] if isinstance(table, nn.Parameter) else [])
    use_background = background > 0 and target != "images"
    nothing = nn.Parameter(nn.functional.normalize(torch.randn(1, int(table.shape[1])), dim=-1))
    if use_background:
        params.append(nothing)
    box = (max(-90.0, float(lat.min()) - 1), min(90.0, float(lat.max()) + 1),
           max(-180.0, float(lon.min()) - 1), min(180.0, float(lon.max()) + 1))
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    points = torch.as_tensor(np.stack([lat, lon], axis=1))
    y = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, -(-len(points) // batch_size))
    total = epochs * steps_per_epoch  # a warm-up of under one step divides by zero inside OneCycleLR (few records)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total,
                                                    pct_start=max(0.1, min(0.9, 1.5 / total)))
    start, losses, done_epochs = time.perf_counter(), [], 0
    encoder.train()
    for _ in range(epochs):
        order = torch.randperm(len(points), generator=generator)
        epoch_loss = 0.0
        for s in range(0, len(points), batch_size):
            batch = order[s:s + batch_size]
            loc = encoder(_jitter(points[batch], jitter_km, jitter_fraction, generator) if jitter_km > 0 else points[batch])
            scale = encoder.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            if target == "images":
                logits = scale * loc @ fixed[batch].T
                eye = torch.arange(len(batch))
                loss = (nn.functional.cross_entropy(logits, eye) + nn.functional.cross_entropy(logits.T, eye)) / 2
            else:
                taxa_space = nn.functional.normalize(table, dim=-1)
                labels_batch = y[batch]
                if use_background:
                    n_bg = max(1, int(round(background * len(batch))))
                    loc = torch.cat([loc, encoder(_uniform_points(n_bg, box, generator))])
                    taxa_space = torch.cat([taxa_space, nn.functional.normalize(nothing, dim=-1)])
                    labels_batch = torch.cat([labels_batch, torch.full((n_bg,), len(names), dtype=torch.long)])
                loss = nn.functional.cross_entropy(scale * loc @ taxa_space.T, labels_batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            epoch_loss += loss.item() * len(batch)
        losses.append(round(epoch_loss / len(points), 4))
        done_epochs += 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    encoder.eval()
    vectors = nn.functional.normalize(table.detach(), dim=-1).numpy().astype(np.float32)
    background_vector = nn.functional.normalize(nothing.detach(), dim=-1)[0].numpy() if use_background else None
    report = {"target": target, "records": int(len(points)), "taxa": len(names), "epochs": done_epochs,
              "jitter_km": jitter_km, "jitter_fraction": jitter_fraction, "background": background if use_background else 0,
              "loss_first": losses[0], "loss_last": losses[-1], "seconds": round(time.perf_counter() - start, 2),
              "preset": preset, "dim": int(vectors.shape[1])}
    space = {"kind": "learned", "encoder": None, "fingerprint": None, "dim": int(vectors.shape[1])} if target == "learned" \
        else {"kind": "given", "dim": int(vectors.shape[1])}
    model = LocationModel(encoder, names, vectors, counts, {"space": space, "training": report}, background_vector)
    return model, report


def _uniform_points(n: int, box: tuple[float, float, float, float], generator: torch.Generator) -> torch.Tensor:
    """n points uniform on the sphere within (south, north, west, east)."""
    south, north, west, east = box
    lo, hi = math.sin(math.radians(south)), math.sin(math.radians(north))
    lat = torch.rad2deg(torch.asin(lo + (hi - lo) * torch.rand(n, generator=generator)))
    return torch.stack((lat, west + (east - west) * torch.rand(n, generator=generator)), dim=1)


def _jitter(points: torch.Tensor, km: float, fraction: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(points.shape, generator=generator) * (km / 111.195)
    noise *= (torch.rand(len(points), 1, generator=generator) < fraction).float()
    lat = (points[:, 0] + noise[:, 0]).clamp(-90.0, 90.0)
    lon = points[:, 1] + noise[:, 1] / torch.cos(torch.deg2rad(points[:, 0])).clamp(min=0.05)
    return torch.stack((lat, (lon + 180.0) % 360.0 - 180.0), dim=1)


# ---------------------------------------------------------------------- collection stage
def location_dir(collection: Collection) -> Path:
    return collection.path / FOLDER


def _training_records(collection: Collection) -> tuple[pd.DataFrame, dict[str, int]]:
    table = collection.specimens()
    flags = flag_records(table)
    table = table.assign(taxon=table["scientificName"].fillna("").astype(str).map(normalize_name))
    keep = flags["usable"].to_numpy() & (table["taxon"] != "").to_numpy()
    counts = {"specimens": int(len(table)), "with_coordinates": int(flags["has_coordinates"].sum()),
              "flagged_skipped": int((flags["has_coordinates"] & ~flags["usable"]).sum()),
              "unnamed_skipped": int((flags["usable"].to_numpy() & (table["taxon"] == "").to_numpy()).sum())}
    return table[keep], counts


def _image_vectors(folder: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Vectors of the ids present in the image index (a mask over `ids`), and the index manifest."""
    index = SpecimenIndex.load(folder)
    present = np.isin(ids, index.ids())
    vectors = np.stack([index.vector(int(i)) for i in ids[present]]) if present.any() else np.zeros((0, index.manifest["dim"]))
    return present, vectors.astype(np.float32), index.manifest


def _space_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "image-encoder", "encoder": manifest["encoder"], "fingerprint": manifest["fingerprint"],
            "dim": int(manifest["dim"])}


def train_location_encoder(collection: str | Path | Collection, *, target: str = "auto", taxon_space: str = "auto",
                           model: str | None = None, preset: str = DEFAULT_PRESET, epochs: int = 20,
                           batch_size: int = 512, lr: float = 2e-3, min_images: int = 100, learned_dim: int = 64,
                           jitter_km: float = 50.0, seed: int = 0, max_seconds: float | None = None,
                           device: str | None = None) -> dict[str, Any]:
    """Train the collection's location encoder and save it in COLLECTION/location/; returns a summary dict.

    `model`, when given, must be the encoder the image index was built with (else IndexMismatch)."""
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    records, counts = _training_records(col)
    if records.empty:
        raise BadInput(f"{col.path.name} has no specimens with usable coordinates and a name to train on "
                       f"({counts['with_coordinates']} with coordinates, {counts['flagged_skipped']} flagged)")
    folder = index_dir(col)
    index_manifest = SpecimenIndex.read_manifest(folder) if (folder / "manifest.json").exists() else None
    if model is not None:
        if index_manifest is None:
            raise BadInput(f"{col.path.name} has no image index; run `herbaria index` first or leave model unset")
        if model != index_manifest["encoder"]:
            raise IndexMismatch(f"the image index was built with {index_manifest['encoder']!r}, not {model!r}; "
                                f"train against the index's encoder or rebuild the index")
    ids = records["specimen_id"].to_numpy(np.int64)
    present, vectors, _ = _image_vectors(folder, ids) if index_manifest else (np.zeros(len(ids), bool), None, None)
    if target == "auto":
        target = "images" if present.sum() >= max(min_images, 0.5 * len(ids)) else "taxa"
    lat = records["decimalLatitude"].to_numpy(float)
    lon = records["decimalLongitude"].to_numpy(float)
    taxa = records["taxon"].to_numpy(object)
    common = dict(preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_seconds=max_seconds,
                  jitter_km=jitter_km)
    if target == "images":
        if index_manifest is None or not present.any():
            raise BadInput(f"{col.path.name} has no image vectors for its georeferenced specimens; use target='taxa'")
        fitted, report = fit_location_encoder(lat[present], lon[present], taxa[present], target="images",
                                              record_vectors=vectors, **common)
        space = _space_of(index_manifest)
    elif target == "taxa":
        names = sorted(set(taxa.tolist()))
        space_name = taxon_space if taxon_space != "auto" else ("clip" if index_manifest else "learned")
        if space_name == "learned":
            fitted, report = fit_location_encoder(lat, lon, taxa, target="learned", dim=learned_dim, **common)
            space = {"kind": "learned", "encoder": None, "fingerprint": None, "dim": learned_dim}
        else:
            taxon_vectors, space = _taxon_text_vectors(names, space_name, index_manifest, device)
            fitted, report = fit_location_encoder(lat, lon, taxa, target="taxa", taxon_vectors=taxon_vectors,
                                                  taxon_names=names, **common)
    else:
        raise BadInput(f"unknown target {target!r}; use auto, images or taxa")
    fitted.manifest = {"format": FORMAT_VERSION, "space": space, "encoder_config": fitted.encoder.config,
                       "training": {**report, **counts}, "created": time.time()}
    out = location_dir(col)
    save_location_model(fitted, out)
    return {**report, **counts, "space": space, "path": str(out)}


def _taxon_text_vectors(names: list[str], space_name: str, index_manifest: dict[str, Any] | None,
                        device: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Taxon-name vectors from the image encoder's text tower ("clip") or a sentence-transformers preset."""
    if space_name == "clip":
        if index_manifest is None:
            raise BadInput("taxon_space='clip' needs an image index (its encoder's text tower); use 'learned' or 'minilm'")
        from retrieval.vectors import create_encoder

        encoder = create_encoder(index_manifest["encoder"], device=device)
        if encoder.fingerprint != index_manifest["fingerprint"]:
            raise IndexMismatch(f"encoder {encoder.name!r} loaded here has weights {encoder.fingerprint}, the index "
                                f"was built with {index_manifest['fingerprint']}; rebuild the index first")
        return encoder.encode_texts([f"a photo of {n}" for n in names]), _space_of(index_manifest)
    from retrieval.flora import create_text_encoder

    text = create_text_encoder(space_name, device=device)
    return text.encode(names), {"kind": "text-encoder", **text.info}


# ---------------------------------------------------------------------- persistence
def save_location_model(model: LocationModel, folder: str | Path) -> None:
    """Weights, taxa, then the manifest last (each atomically): a crash leaves the previous trio loadable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, write in ((WEIGHTS_FILE, lambda p: torch.save(model.encoder.state_dict(), p)),
                        (TAXA_FILE, lambda p: np.savez(p, taxa=np.asarray(model.taxa, dtype=str),
                                                       vectors=model.taxon_vectors, counts=model.counts,
                                                       **({"background": model.background_vector}
                                                          if model.background_vector is not None else {})))):
        tmp = folder / (name + ".tmp")
        with open(tmp, "wb") as handle:
            write(handle)
        checksums[name] = sha256_file(tmp)
        os.replace(tmp, folder / name)
    model.manifest = {**model.manifest, "encoder_config": model.encoder.config, "taxa": len(model.taxa),
                      "checksums": checksums, "updated": time.time()}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(model.manifest, indent=2))
    os.replace(tmp, folder / MANIFEST_FILE)


def load_location_model(collection_or_folder: str | Path | Collection, *,
                        encoder: dict[str, Any] | None = None) -> LocationModel:
    """Load and verify a location model.

    From a collection, it is refused when the collection's image index is now built by another
    encoder than the one it was trained against; `encoder` (an encoder's info dict) is checked too."""
    if isinstance(collection_or_folder, Collection) or (Path(collection_or_folder) / "collection.json").exists():
        col = collection_or_folder if isinstance(collection_or_folder, Collection) else Collection.open(collection_or_folder)
        folder, index_folder = location_dir(col), index_dir(col)
    else:
        folder, index_folder = Path(collection_or_folder), None
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise BadInput(f"no location model in {folder.parent.name or folder}; train one with train_location_encoder first")
    manifest = json.loads(path.read_text())
    space = manifest.get("space", {})
    if space.get("kind") == "image-encoder":
        if index_folder is not None and (index_folder / "manifest.json").exists():
            _check_space(space, SpecimenIndex.read_manifest(index_folder), "the collection's image index")
        if encoder is not None:
            _check_space(space, encoder, "the encoder asked for")
    elif encoder is not None and space.get("kind") == "text-encoder":
        _check_space(space, encoder, "the encoder asked for")
    for name in (WEIGHTS_FILE, TAXA_FILE):
        if not (folder / name).exists() or sha256_file(folder / name) != manifest.get("checksums", {}).get(name):
            raise HerbariaError(f"the location model file {name} is missing or damaged (checksum mismatch); retrain it")
    encoder_model = LocationEncoder.from_config(manifest["encoder_config"])
    encoder_model.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
    encoder_model.eval()
    with np.load(folder / TAXA_FILE) as data:
        taxa, vectors, counts = [str(t) for t in data["taxa"]], data["vectors"].astype(np.float32), data["counts"]
        background = data["background"].astype(np.float32) if "background" in data.files else None
    return LocationModel(encoder_model, taxa, vectors, counts, manifest, background)


def _check_space(space: dict[str, Any], other: dict[str, Any], what: str) -> None:
    name = other.get("encoder", other.get("name"))
    same = (name, other.get("fingerprint"), int(other.get("dim", -1))) == (space.get("encoder"), space.get("fingerprint"),
                                                                          space.get("dim"))
    if not same:
        raise IndexMismatch(
            f"this location model was trained against encoder {space.get('encoder')!r} (weights {space.get('fingerprint')}, "
            f"dim {space.get('dim')}) but {what} is {name!r} (weights {other.get('fingerprint')}, dim {other.get('dim')}); "
            f"retrain it with train_location_encoder"
        )
