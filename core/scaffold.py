"""``python app.py new-module <name>``: a working module folder to start from."""

from __future__ import annotations

from pathlib import Path

from core.module import MODULE_NAME


class ScaffoldError(ValueError):
    """The module cannot be created (bad name, folder exists)."""


_MODULE_YAML = """\
name: {name}
version: 0.1.0
description: What {name} does
depends_on: []
"""

_ACTIONS_YAML = """\
actions:
  hello:
    summary: Greet someone
    handler: handlers:hello
    auth: public            # public | user | api_key | any (default: user)
    params:
      name: {{type: string, minLength: 1, maxLength: 100, default: world}}
    returns:
      type: object
      properties:
        greeting: {{type: string}}
"""

_HANDLERS = '''\
"""Handlers of the {name} module: plain functions, ctx first, params as keywords."""

from __future__ import annotations

from typing import Any


def hello(ctx: Any, *, name: str = "world") -> dict[str, str]:
    return {{"greeting": f"hello, {{name}}"}}
'''


def write_module(parent: Path, name: str) -> Path:
    """Create ``parent/name`` with module.yaml, actions.yaml and handlers.py."""
    if not MODULE_NAME.match(name):
        raise ScaffoldError(f"module name {name!r} must match {MODULE_NAME.pattern}")
    folder = parent / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists")
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "module.yaml").write_text(_MODULE_YAML.format(name=name))
    (folder / "actions.yaml").write_text(_ACTIONS_YAML.format(name=name))
    (folder / "handlers.py").write_text(_HANDLERS.format(name=name))
    return folder
