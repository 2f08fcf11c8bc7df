"""One place that names every preset: encoders, index types, text encoders, captioners.

Presets live as JSON beside this module (open_clip style), so adding a model is a
data change. A name that is not a preset may still be a checkpoint reference:
`hf-hub:org/repo` or `local-dir:/path` are passed to the loader as they are.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from retrieval.errors import BadInput

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
KINDS = ("encoders", "indexes", "text_encoders", "captioners")
CHECKPOINT_SCHEMES = ("hf-hub:", "local-dir:")


@cache
def _load(kind: str) -> dict[str, dict[str, Any]]:
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; known: {', '.join(KINDS)}")
    path = PRESETS_DIR / f"{kind}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def list_presets(kind: str) -> dict[str, str]:
    """Preset names of one kind with their one-line descriptions."""
    return {name: spec.get("description", "") for name, spec in _load(kind).items()}


def preset(kind: str, name: str) -> dict[str, Any]:
    """The spec of a named preset, or of a checkpoint reference (`hf-hub:`, `local-dir:`)."""
    presets = _load(kind)
    if name in presets:
        return {"name": name, **presets[name]}
    if name.startswith(CHECKPOINT_SCHEMES):
        return {"name": name, "model": name}
    known = ", ".join(presets) or "none"
    raise BadInput(f"unknown {kind[:-1].replace('_', ' ')} {name!r}; presets: {known}; or give hf-hub:ORG/REPO or local-dir:PATH")


def preset_path(relative: str) -> Path:
    """A file shipped beside the presets (model configs, vocabularies)."""
    return PRESETS_DIR / relative
