"""Lazy package exports: a package names its small public API without importing every module.

Why: `herbaria traits` should not import torch because `retrieval.vectors` exports the encoder.
Each subpackage's `__init__` maps its public names to the modules that define them (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, api: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """`__getattr__` and `__all__` for `package`, whose public `api` maps a name to its module."""

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(api)
