"""One name per captioner, beside the encoder presets: `create_captioner("grounded" | "tiny-test" | ...)`.

Presets live in retrieval/presets/captioners.json (kind: grounded, trained, decoder,
blip, coca); `local-dir:PATH` loads a checkpoint written by train-captioner, and
`trained` the one stored in the collection. Neural captioners are loaded once per
process: a chat server captions many images with the same weights.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from captioning.grounded import TraitCaptioner
from retrieval.errors import BadInput
from retrieval.registry import list_presets, preset

CAPTIONER_DIR = "captioner"
MODEL_DIR = "model"


def list_captioners() -> dict[str, str]:
    return list_presets("captioners")


def trained_dir(collection_path: str | Path) -> Path:
    return Path(collection_path) / CAPTIONER_DIR / MODEL_DIR


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a train-captioner output folder holding one in model/."""
    path = Path(path).expanduser()
    if (path / "captioner.json").exists():
        return path
    if (path / MODEL_DIR / "captioner.json").exists():
        return path / MODEL_DIR
    raise BadInput(f"no captioner checkpoint in {path.name or path} (captioner.json missing); "
                   "train one with `herbaria train-captioner COLLECTION`")


def _stamp(folder: Path) -> float:
    """Retraining rewrites captioner.json last: its mtime tells a cached checkpoint is stale."""
    return (folder / "captioner.json").stat().st_mtime


@lru_cache(maxsize=4)
def _load_neural(kind: str, key: str, encoder: str | None, device: str | None, precision: str,
                 stamp: float = 0.0) -> Any:
    if kind == "checkpoint":
        from captioning.decoder import NeuralCaptioner

        return NeuralCaptioner.load(key, device=device, precision=precision)
    spec = preset("captioners", key)
    if kind == "decoder":
        from captioning.decoder import NeuralCaptioner

        return NeuralCaptioner.from_spec(spec, encoder=encoder, device=device, precision=precision)
    if kind == "blip":
        from captioning.adapters import BlipCaptioner

        return BlipCaptioner.from_spec(spec, device=device, precision=precision)
    if kind == "coca":
        from captioning.adapters import CocaCaptioner

        return CocaCaptioner.from_spec(spec, device=device, precision=precision)
    raise BadInput(f"captioner {key!r} has an unknown kind {kind!r}")


def create_captioner(name: str = "grounded", *, collection: Any = None, encoder: str | None = None,
                     device: str | None = None, precision: str = "auto", **options: Any) -> Any:
    """The captioner for a preset name, `trained` (the collection's own) or `local-dir:PATH`.

    `encoder` picks the image encoder of an untrained decoder preset (default: the preset's).
    `options` go to the grounded captioner (min_support, min_count, max_values, temperature).
    """
    if name.startswith("local-dir:"):
        folder = resolve_checkpoint(name[len("local-dir:"):]).resolve()
        return _load_neural("checkpoint", str(folder), None, device, precision, _stamp(folder))
    spec = preset("captioners", name)
    kind = spec.get("kind", "decoder")
    if kind == "grounded":
        return TraitCaptioner(**options)
    if kind == "trained":
        if collection is None:
            raise BadInput("the 'trained' captioner belongs to a collection: caption through a collection")
        folder = trained_dir(collection.path)
        if not (folder / "captioner.json").exists():
            raise BadInput(f"collection {collection.path.name} has no trained captioner; run "
                           f"`herbaria train-captioner {collection.path.name}` or use --captioner grounded")
        return _load_neural("checkpoint", str(folder.resolve()), None, device, precision, _stamp(folder))
    return _load_neural(kind, name, encoder, device, precision)
