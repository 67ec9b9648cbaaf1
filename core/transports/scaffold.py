"""``python app.py new-module <name>``: a working module folder to start from."""

from __future__ import annotations

from pathlib import Path

from core.contracts.module import MODULE_NAME


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


_CONFTEST = '''\
"""Fixtures of the {name} module's tests: run them from the project's folder with
``python -m pytest <path to this folder>``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app import boot
from core.transports.testing import Harness

MODULE = Path(__file__).resolve().parents[1]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """The app with this module, on a SQLite file of the test's own and memory://."""
    with Harness.boot(boot, MODULE, tmp_path=tmp_path) as booted:
        yield booted
'''

_TEST = '''\
"""Tests of the {name} module, through the same chain callers use (see core/testing.py)."""

from __future__ import annotations

from core.transports.testing import Harness


def test_hello_greets_by_name(harness: Harness) -> None:
    assert harness.call("{name}.hello", {{"name": "Ada"}}).data == {{"greeting": "hello, Ada"}}


def test_hello_has_a_default(harness: Harness) -> None:
    assert harness.call("{name}.hello").data == {{"greeting": "hello, world"}}


def test_an_empty_name_is_refused(harness: Harness) -> None:
    answer = harness.call("{name}.hello", {{"name": ""}})
    assert answer.status == 422 and answer.problem == "validation"
'''


def write_module(parent: Path, name: str) -> Path:
    """Create ``parent/name`` with module.yaml, actions.yaml, handlers.py and tests/."""
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
    (folder / "tests").mkdir()
    (folder / "tests" / "conftest.py").write_text(_CONFTEST.format(name=name))
    (folder / "tests" / f"test_{name}.py").write_text(_TEST.format(name=name))
    return folder
