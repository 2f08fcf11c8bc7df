"""The text a neural decoder is prompted with: the neighbours' descriptions of one organ, then the organ.

Retrieval-augmented in the spirit of SmallCap: the decoder sees what the most
similar specimens' taxa say about the organ it is about to describe, so a small
decoder can copy and adapt grounded text instead of memorising every flora.
Training and captioning build prompts here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from captioning.base import Neighbour
from captioning.grounded import GROUP_ORDER, group_label

WHOLE = "description"  # the organ key of a description that has no organ sections


def organ_label(organ: str) -> str:
    """'leaf' -> 'Leaves', 'plant' -> 'Habit' (the vocabulary's groups), other keys capitalised."""
    if organ in GROUP_ORDER:
        return group_label(organ)
    return organ.replace("_", " ").strip().capitalize()


def neighbour_context(neighbours: Sequence[Neighbour], organ: str, *, max_taxa: int = 3,
                      exclude_specimen: int | None = None) -> str:
    """'Similar: Taxon a: text. | Taxon b: text.' from the closest distinct taxa that describe `organ`."""
    parts: list[str] = []
    seen: set[str] = set()
    for nb in sorted(neighbours, key=lambda n: -float(n.get("score", 0.0))):
        if exclude_specimen is not None and nb.get("specimen_id") == exclude_specimen:
            continue
        name = nb.get("name") or ""
        sections = nb.get("sections") or {}
        text = (sections.get(organ) or "").strip()
        if not name or name in seen or not text:
            continue
        seen.add(name)
        parts.append(f"{name}: {text}")
        if len(parts) >= max_taxa:
            break
    return ("Similar: " + " | ".join(parts)) if parts else ""


def prompt_text(organ: str, context: str = "") -> str:
    """Context (may be empty) then the organ label; the target follows after a space."""
    return f"{context}\n{organ_label(organ)}:" if context else f"{organ_label(organ)}:"


def compose(sections: dict[str, str]) -> str:
    """Sections as one description; a section that already opens with its organ ('Leaves alternate') is not relabelled."""
    parts = []
    for organ, text in sections.items():
        text = text.strip()
        if not text:
            continue
        label = organ_label(organ)
        first = text.split(" ", 1)[0].strip(",.:;").lower()
        if organ == WHOLE or first in {label.lower(), organ.lower()} or first.rstrip("s") == organ.lower():
            parts.append(text)
        else:
            parts.append(f"{label}: {text}")
    return " ".join(parts)
