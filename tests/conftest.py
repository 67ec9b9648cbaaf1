"""Shared fixtures: ``app``/``client`` on the real project, and tiny modules in tmp_path."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings

from app import ROOT, create_app
from core.runtime import shutdown_app

# Slow CI machines: no per-example deadline.
settings.register_profile("switchboard", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "switchboard"))

MakeApp = Callable[..., Flask]
WriteModule = Callable[..., Path]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """Build apps with an isolated environment (APP_ENV=test plus ``env``); shut down after."""
    built: list[Flask] = []

    def make(
        env: Mapping[str, str] | None = None,
        *,
        root: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Flask:
        environ = {"APP_ENV": "test", **(env or {})}
        app = create_app(environ, overrides=overrides, root=root or ROOT)
        built.append(app)
        return app

    yield make
    for app in reversed(built):
        shutdown_app(app)


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def write_module(tmp_path: Path) -> WriteModule:
    """Write ``tmp_path/<parent>/<name>/<filename>`` for each of ``files`` (dedented).

    Returns the parent folder, ready to be put on MODULES_PATH.
    """

    def write(name: str, files: Mapping[str, str], parent: str = "extra") -> Path:
        folder = tmp_path / parent / name
        folder.mkdir(parents=True, exist_ok=True)
        for filename, text in files.items():
            (folder / filename).write_text(textwrap.dedent(text))
        return tmp_path / parent

    return write
