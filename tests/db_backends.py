"""Building each database backend for the contract tests (one table, every backend)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from managers.db.manager import Backend, Database

BACKEND_NAMES = ["sqlite", "postgres", "mongo"]
_names = itertools.count()


def unique_collection(prefix: str = "c") -> str:
    return f"{prefix}{next(_names)}"


def build_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "sqlite":
        from managers.db.backends.sqlite import SqliteBackend

        return SqliteBackend(
            tmp_path / "contract.db",
            pool_size=16,
            pool_timeout=30,
            lock_timeout=30,
            waiting_writers=16,
        )
    if kind == "postgres":
        from managers.db.backends.postgres import PostgresBackend

        # The session's server (this may serve a module-scoped fixture), a fresh database.
        url = request.getfixturevalue("postgres_server").create_database(unique_collection("db"))
        return PostgresBackend(
            url, pool_size=20, pool_timeout=30, statement_timeout=30, connect_retries=1
        )
    import mongomock

    from managers.db.backends.mongo import MongoBackend

    return MongoBackend(
        "mongodb://localhost/contract", timeout=1, client_factory=mongomock.MongoClient
    )


def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    backend = build_backend(kind, request, tmp_path)
    backend.start()
    try:
        yield Database(backend)
    finally:
        backend.close()
