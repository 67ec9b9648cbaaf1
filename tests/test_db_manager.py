"""DatabaseManager: URL choice, boot errors, health, the waiting pool, timeouts, read URL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.base.errors import BootError, DependencyUnavailable, Timeout
from core.transports.http import extension
from managers.db.backends.postgres import PostgresBackend
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp
from tests.servers import free_port


def backend_of(app: Any) -> Any:
    return extension(app).app_manager.get(DatabaseManager)


def test_the_embedded_default_is_a_sqlite_file_under_the_project(
    make_app: MakeApp, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    app = make_app({"DATABASE_URL": "sqlite:///var/data.db"}, root=project)
    ready = app.test_client().get("/health/ready").get_json()
    assert ready["checks"]["db"] == {"status": "ok", "backend": "sqlite"}
    backend_of(app).documents.collection("things").insert_one({"a": 1})
    assert (project / "var" / "data.db").is_file()


def test_postgres_through_the_app(make_app: MakeApp, postgres_url: str) -> None:
    app = make_app({"DATABASE_URL": postgres_url})
    db = backend_of(app).documents
    db.collection("things").insert_one({"_id": "x", "n": 1})
    assert db.collection("things").find_one({"n": 1})["_id"] == "x"
    assert app.test_client().get("/health/ready").get_json()["checks"]["db"]["backend"] == (
        "postgresql"
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("oracle://scott:tiger@db/x", "unsupported database scheme 'oracle'"),
        ("sqlite://", "needs a file path"),
    ],
)
def test_bad_database_urls_fail_the_boot(make_app: MakeApp, url: str, words: str) -> None:
    with pytest.raises(BootError) as caught:
        make_app({"DATABASE_URL": url})
    assert words in str(caught.value)
    assert "tiger" not in str(caught.value)


def test_an_unreachable_postgres_fails_the_boot_without_the_password(make_app: MakeApp) -> None:
    url = f"postgresql://app:pa55w0rd@127.0.0.1:{free_port()}/appdb"
    with pytest.raises(BootError) as caught:
        make_app(
            {
                "DATABASE_URL": url,
                "SB_DATABASE__CONNECT_RETRIES": "1",
                "SB_DATABASE__POOL_TIMEOUT": "1s",
            }
        )
    text = str(caught.value)
    assert "database.url" in text and "unreachable" in text
    assert "127.0.0.1" in text and "appdb" in text
    assert "pa55w0rd" not in text


@contextlib.contextmanager
def exhausted(backend: PostgresBackend, release: threading.Event) -> Iterator[None]:
    """Both of the backend's two connections held by transactions until ``release``."""
    backend.collection("held").count()  # create the table before the race
    holding = threading.Barrier(3)

    def hold() -> None:
        with backend.transaction():
            backend.collection("held").count()
            holding.wait(10)
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    try:
        holding.wait(10)
        yield
    finally:
        release.set()
        for thread in holders:
            thread.join(10)


def pool_of_two(url: str, timeout: float) -> PostgresBackend:
    backend = PostgresBackend(
        url, pool_size=2, pool_timeout=timeout, statement_timeout=30, connect_retries=0
    )
    backend.start()
    return backend


def test_an_exhausted_pool_answers_503_after_pool_timeout(postgres_url: str) -> None:
    backend = pool_of_two(postgres_url, 0.3)
    try:
        with (
            exhausted(backend, threading.Event()),
            pytest.raises(DependencyUnavailable, match=r"no free database connection within 0\.3s"),
        ):
            backend.collection("held").count()
        assert backend.collection("held").count() == 0  # and recovers
    finally:
        backend.close()


def test_a_call_waits_for_the_next_free_connection(postgres_url: str) -> None:
    backend = pool_of_two(postgres_url, 10)
    release = threading.Event()
    counted: list[int] = []
    try:
        with exhausted(backend, release):
            waiter = threading.Thread(
                target=lambda: counted.append(backend.collection("held").count())
            )
            waiter.start()  # the pool is empty: it waits instead of failing
            release.set()
            waiter.join(10)
        assert counted == [0]
    finally:
        backend.close()


def test_a_statement_past_the_timeout_is_a_504(postgres_url: str) -> None:
    backend = PostgresBackend(
        postgres_url, pool_size=2, pool_timeout=5, statement_timeout=0.2, connect_retries=0
    )
    backend.start()
    try:
        with pytest.raises(Timeout), backend.session(write=False) as session:
            session.cursor().execute("SELECT pg_sleep(2)")
        assert backend.collection("after").count() == 0  # the pool recovered
    finally:
        backend.close()


def test_reads_outside_transactions_use_the_read_url(make_app: MakeApp, tmp_path: Path) -> None:
    primary = tmp_path / "primary.db"
    replica = tmp_path / "replica.db"
    # The "replica" is a second file: what was written to the primary is not there, which
    # shows where each read went. A replica gets its tables from the primary.
    from managers.db.backends.sqlite import SqliteBackend

    seed = SqliteBackend(replica, pool_size=1, pool_timeout=5, lock_timeout=5, waiting_writers=1)
    seed.start()
    seed.collection("things").count()
    seed.close()
    app = make_app(
        {"DATABASE_URL": f"sqlite:///{primary}", "DATABASE_READ_URL": f"sqlite:///{replica}"}
    )
    db = backend_of(app).documents
    things = db.collection("things")
    things.insert_one({"_id": "w", "n": 1})
    assert things.find_one({"_id": "w"}) is None  # read from the replica
    with db.transaction():
        assert things.find_one({"_id": "w"})["n"] == 1  # inside a transaction: the primary
        assert things.update_one({"_id": "w"}, {"$inc": {"n": 1}})
    assert app.test_client().get("/health/ready").get_json()["checks"]["db"]["status"] == "ok"


def test_health_fails_when_the_database_goes_away(make_app: MakeApp, postgres_server: Any) -> None:
    import psycopg2

    name = "vanishing"
    app = make_app(
        {
            "DATABASE_URL": postgres_server.create_database(name),
            "SB_DATABASE__CONNECT_RETRIES": "0",
            "SB_DATABASE__POOL_TIMEOUT": "1s",
        }
    )
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    admin = psycopg2.connect(postgres_server.url())
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "failed"
    assert body["checks"]["db"]["status"] == "failed"
    assert postgres_server.url() not in str(body)
