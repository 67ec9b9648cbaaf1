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
from core.transports.flask_app import shutdown_app
from tests.servers import PostgresServer, RedisServer, ServerUnavailable

# Slow CI machines: no per-example deadline.
settings.register_profile("switchboard", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "switchboard"))

MakeApp = Callable[..., Flask]
WriteModule = Callable[..., Path]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """Build apps with an isolated environment (APP_ENV=test, a SQLite file of this test's
    own, plus ``env``); shut them down after the test."""
    built: list[Flask] = []

    def make(
        env: Mapping[str, str] | None = None,
        *,
        root: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Flask:
        environ = {"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/app.db", **(env or {})}
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


# --- real servers, once per session ---------------------------------------------------


def _unavailable(what: str, exc: ServerUnavailable) -> None:
    """Under CI a missing server fails the test; elsewhere it skips, saying why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def _running(server: Any, what: str, cleanup: Callable[[], None]) -> Iterator[Any]:
    """Start ``server`` for a fixture; under CI a failure fails, elsewhere it skips."""
    try:
        server.start()
    except ServerUnavailable as exc:
        cleanup()
        _unavailable(what, exc)
    yield server
    cleanup()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield from _running(server, "PostgreSQL", server.stop)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield from _running(server, "redis-server", server.cleanup)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, for tests that restart it."""
    server = PostgresServer()
    yield from _running(server, "PostgreSQL", server.stop)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop and restart it."""
    server = RedisServer()
    yield from _running(server, "redis-server", server.cleanup)


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database in the session's PostgreSQL server."""
    return postgres_server.create_database(f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses: tests isolate by prefix on the shared server."""
    return f"t{os.getpid()}_{next(_counter)}:"
