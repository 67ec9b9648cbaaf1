"""Code-free actions: a declaration with ``type: <name>`` runs without a handler.

Each type is one file of this package that registers its meta-schemas and its builder
(``registry.register``); every file here is imported once, so a new type is one new file.
The shipped types: ``database`` (code_free/database.py) and ``http`` with the seed's
``external_api`` (code_free/http.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from core.actions.code_free.registry import (
    TYPES,
    Build,
    CodeFree,
    CodeFreeError,
    CodeFreeType,
    register,
)

for _found in pkgutil.iter_modules(__path__):
    if _found.name != "registry":
        importlib.import_module(f"{__name__}.{_found.name}")

__all__ = ["TYPES", "Build", "CodeFree", "CodeFreeError", "CodeFreeType", "register"]
