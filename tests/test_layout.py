"""The kernel's house: layers as subpackages, two small faces, and shipped modules that
import only the module API (import-linter, run by ``make lint``, holds the imports)."""

from __future__ import annotations

import ast

from app import ROOT
from core.errors import Problem
from managers.modules.loading import MODULE_API, private_core_imports, read_manifest

CORE = ROOT / "core"
LAYERS = ("base", "config", "contracts", "actions", "pipeline", "runtime", "transports")


def test_core_is_layer_packages_and_its_public_faces() -> None:
    files = sorted(p.name for p in CORE.glob("*.py"))
    assert files == [
        "__init__.py",
        "calls.py",
        "errors.py",
        "manager.py",
        "module.py",
        "testing.py",
    ]
    packages = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((CORE / layer / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"core/{layer} says what it holds"


def test_the_faces_only_hand_names_on() -> None:
    """A face defines nothing: everything it offers lives in a layer."""
    for face in ("calls", "errors", "manager", "module", "testing"):
        tree = ast.parse((CORE / f"{face}.py").read_text())
        defined = [n for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)]
        assert not defined, f"core/{face}.py defines {[n.name for n in defined]}"


def test_shipped_modules_import_only_the_module_api() -> None:
    problems: list[Problem] = []
    for folder in sorted(p for p in (ROOT / "modules").iterdir() if (p / "actions.yaml").exists()):
        manifest = read_manifest(folder, ROOT, problems)
        problems.extend(private_core_imports(manifest, ROOT))
    assert not problems, [str(p) for p in problems]
    assert MODULE_API == ("core.errors", "core.module", "core.calls", "core.testing")
