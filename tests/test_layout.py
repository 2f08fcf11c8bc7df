"""The layout ARCHITECTURE.md describes: imports point one way, subpackages are used through their API.

Read from the source (every import, also those inside functions), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("retrieval", "captioning", "assistant", "demo", "finetuning", "location", "herbaria")
# what each top-level package may import (besides itself), as ARCHITECTURE.md draws it
ALLOWED = {
    "retrieval": set(),
    "location": {"retrieval"},
    "captioning": {"retrieval"},
    "finetuning": {"retrieval", "captioning"},
    "assistant": {"retrieval", "captioning", "location"},
    "demo": {"retrieval", "captioning", "assistant", "location"},
    "herbaria": {"retrieval", "captioning", "assistant", "demo", "finetuning", "location"},
}
SUBPACKAGES = ("retrieval.collections", "retrieval.vectors", "retrieval.flora")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "TEMPORARY SHIM" in path.read_text()[:200]:
                continue
            found.append((".".join(path.relative_to(REPO).with_suffix("").parts), path))
    return found


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every `import` and `from ... import` in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_top_level_packages_import_one_way() -> None:
    wrong = []
    for module, path in _modules():
        owner = module.split(".")[0]
        for target, _ in _imports(path):
            top = target.split(".")[0]
            if top in PACKAGES and top != owner and top not in ALLOWED[owner]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_other_packages_use_a_subpackage_through_its_api() -> None:
    """Outside `retrieval.X`, names come from `retrieval.X` itself, never from its modules' private names."""
    wrong = []
    for module, path in _modules():
        for target, names in _imports(path):
            for sub in SUBPACKAGES:
                if module.startswith(sub + ".") or module == sub:
                    continue
                if target.startswith(sub + "."):
                    wrong.append(f"{module} imports {target} (use {sub})")
                elif target == sub:
                    api = set(importlib.import_module(sub).__all__)
                    wrong += [f"{module} imports {sub}.{n}, not in its API" for n in names if n not in api]
            wrong += [f"{module} imports private {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__") and target.split(".")[0] != module.split(".")[0]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_api_name_resolves(sub: str) -> None:
    package = importlib.import_module(sub)
    for name in package.__all__:
        assert getattr(package, name) is not None, f"{sub}.{name}"
