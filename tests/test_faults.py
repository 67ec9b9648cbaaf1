"""Faults below the application, through a served process: a SQLite lock held by another
process, a damaged SQLite file. Each ends in a clear 503 for the calls that need the
database, the others are served as usual, and readiness says what is wrong."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

from tests.served import Response, Server, production_secrets, running

PASSWORD = "correct horse battery staple"
LOCK_TIMEOUT = 2.0

PROBE = {
    "actions.yaml": """\
        actions:
          peek:
            summary: Read a collection nobody has written
            handler: handlers:peek
            auth: public
          put:
            summary: Write one document
            handler: handlers:put
            auth: public
            params:
              n: {type: integer, required: true}
    """,
    "handlers.py": """\
        def peek(ctx):
            return {"found": len(ctx.db.collection("never_written").find({}))}


        def put(ctx, *, n):
            return {"id": ctx.db.collection("notes").insert_one({"n": n})}
    """,
}


def write_probe(root: Path) -> Path:
    folder = root / "modules" / "probe"
    folder.mkdir(parents=True)
    for name, text in PROBE.items():
        (folder / name).write_text(textwrap.dedent(text))
    return root / "modules"


def put(server: Server, n: int) -> Response:
    return server.post("/api/v1/actions/probe.put", json.dumps({"n": n}).encode())


def register(server: Server, email: str) -> Response:
    account = json.dumps({"email": email, "password": PASSWORD}).encode()
    return server.post("/api/v1/actions/auth.register", account)


def timed(ask: object) -> float:
    started = time.monotonic()
    response = ask()  # type: ignore[operator]
    assert response.status == 200, response.body
    return time.monotonic() - started


@contextmanager
def held_lock(database: Path) -> Iterator[None]:
    """What another process holding a write transaction looks like to the server."""
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def test_a_held_sqlite_lock_answers_writes_503_and_delays_nothing_else(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "SB_DATABASE__LOCK_TIMEOUT": f"{LOCK_TIMEOUT}s",
        "MODULES_PATH": str(write_probe(tmp_path)),
    }
    with running(tmp_path, "serve", env=env) as server:
        assert put(server, 0).status == 200
        with held_lock(database), ThreadPoolExecutor(20) as pool:
            started = time.monotonic()
            writes = [pool.submit(put, server, n) for n in range(20)]
            writes.append(pool.submit(register, server, "locked@example.com"))
            time.sleep(0.5)  # every write is waiting for the lock or has been turned away
            assert timed(lambda: server.get("/health/live")) < 1.0
            assert timed(lambda: server.post("/api/v1/actions/system.ping", b"")) < 1.0
            peek = server.post("/api/v1/actions/probe.peek", b"")
            assert peek.status == 200 and peek.json()["data"] == {"found": 0}
            answers = [w.result() for w in writes]
            took = time.monotonic() - started
            ready = server.get("/health/ready")
        assert took < LOCK_TIMEOUT + 2.0
        for answer in answers:
            assert answer.status == 503, answer.body
            assert answer.json()["type"] == "/problems/dependency-unavailable"
        assert ready.status == 200
        assert ready.json()["checks"]["db"]["status"] == "degraded"
        # The lock is free again: writes go through and readiness recovers with them.
        assert put(server, 1).status == 200
        assert register(server, "after@example.com").status == 200
        assert server.get("/health/ready").json()["checks"]["db"]["status"] == "ok"
        assert "Traceback" not in server.output()


def damage(database: Path) -> None:
    """Fold the write-ahead log into the file, then overwrite every page but the first."""
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = database.stat().st_size
    assert size > 8192
    with database.open("r+b") as file:
        file.seek(4096)
        file.write(os.urandom(size - 4096))


def test_a_damaged_sqlite_file_is_503_and_fails_readiness(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    env = {
        **production_secrets(tmp_path),
        "DATABASE_URL": f"sqlite:///{database}",
        "SB_HTTP__WORKERS": "1",  # memory:// serves one worker
    }
    with running(tmp_path, "serve", env=env) as server:
        for n in range(5):  # within production's limits on auth.register
            assert register(server, f"user{n}@example.com").status == 200
        damage(database)
        account = json.dumps({"email": "user1@example.com", "password": PASSWORD}).encode()
        for _ in range(5):
            login = server.post("/api/v1/actions/auth.login", account)
            assert login.status == 503, login.body
            problem = login.json()
            assert problem["type"] == "/problems/dependency-unavailable"
            # production: the detail names nothing of the deployment
            for word in ("SQLite", "sqlite", "malformed", str(tmp_path), "damaged"):
                assert word not in problem["detail"]
            assert problem["request_id"] in problem["detail"]
        assert server.post("/api/v1/actions/system.ping", b"").status == 200
        ready = server.get("/health/ready")
        assert ready.status == 503
        assert ready.json()["checks"]["db"]["status"] == "failed"
        time.sleep(0.2)  # the log writer flushes every 50 ms
        output = server.output()
        # once a minute, not once a call
        assert output.count("restored from a backup") == 1
        assert output.count("answers 503: the database file is damaged") == 1
        assert "Traceback" not in output
