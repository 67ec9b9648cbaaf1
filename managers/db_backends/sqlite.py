"""SQLite (stdlib sqlite3): the embedded default. WAL mode, a busy timeout, BEGIN IMMEDIATE.

Several threads share a small pool of connections. Writers take the database lock up front
(``BEGIN IMMEDIATE``) so two writers never deadlock upgrading a read lock, and the busy
timeout makes the second one wait instead of failing with "database is locked".
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import Conflict, DependencyUnavailable
from managers.db_backends.sql import Session, SqlBackend
from managers.db_backends.sql_compiler import Dialect


class SqliteDialect(Dialect):
    p = "?"
    false = "0"
    json_column = "TEXT"

    def path_param(self, path: tuple[str, ...]) -> str:
        return "$." + ".".join(f'"{part}"' for part in path)

    def kind(self) -> str:
        return "json_type(doc, ?)"

    def kind_in(self, kind: str) -> tuple[str, ...]:
        return {
            "number": ("integer", "real"),
            "string": ("text",),
            "bool": ("true", "false"),
            "null": ("null",),
            "object": ("object",),
            "array": ("array",),
        }[kind]

    def compare(self, kind: str, op: str) -> tuple[str, int]:
        return f"json_extract(doc, ?) {op} ?", 1  # BINARY collation: code point order

    def bool_equals(self, value: bool) -> tuple[str, int]:
        return f"json_type(doc, ?) = '{'true' if value else 'false'}'", 1

    def sort_values(self, descending: bool) -> list[tuple[str, int]]:
        order = "DESC" if descending else "ASC"
        return [
            (
                "CASE WHEN json_type(doc, ?) IN ('integer', 'real', 'text') "
                f"THEN json_extract(doc, ?) END {order}",
                2,
            ),
            (f"CASE json_type(doc, ?) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END {order}", 1),
        ]

    def dumps(self, doc: Mapping[str, Any]) -> str:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    def loads(self, raw: Any) -> dict[str, Any]:
        return json.loads(raw)  # type: ignore[no-any-return]

    def index_expression(self, path: tuple[str, ...]) -> str:
        return f"json_extract(doc, '{self.path_param(path)}')"


class _Session:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def cursor(self) -> Any:
        return self.connection.cursor()


class SqliteBackend(SqlBackend):
    """``sqlite:///relative/to/project`` or ``sqlite:////absolute/path``."""

    dialect = SqliteDialect()

    def __init__(
        self, path: Path, *, pool_size: int, busy_timeout: float, read_only: bool = False
    ) -> None:
        super().__init__()
        self.path = path
        self._busy_timeout = busy_timeout
        self._read_only = read_only
        self.read_only = read_only
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wait = busy_timeout

    def start(self) -> None:
        if not self._read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ping()

    def _open(self) -> sqlite3.Connection:
        target = f"file:{self.path}?mode=ro" if self._read_only else f"file:{self.path}"
        connection = sqlite3.connect(
            target,
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        if not self._read_only:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._all.append(connection)
        return connection

    @contextmanager
    def _checkout(self) -> Iterator[sqlite3.Connection]:
        if not self._slots.acquire(timeout=self._wait):
            raise DependencyUnavailable(f"no free SQLite connection within {self._wait:g}s")
        try:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                connection = self._open()
            try:
                yield connection
            finally:
                if connection.in_transaction:  # a failed block must not leak its lock
                    connection.rollback()
                self._idle.put(connection)
        finally:
            self._slots.release()

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Session]:
        if not write:
            with self._checkout() as connection:
                yield _Session(connection)
            return
        with self._begin() as session:
            yield session

    @contextmanager
    def _begin(self) -> Iterator[Session]:
        with self._checkout() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield _Session(connection)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def _translate(self, exc: Exception) -> Exception | None:
        if isinstance(exc, sqlite3.IntegrityError):
            return Conflict("a document with this id or unique key already exists")
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc) or "unable to open" in str(exc)
        ):
            return DependencyUnavailable(f"SQLite is unavailable: {exc}")
        return None

    def _create_table(self, session: Session, table: str) -> None:
        session.cursor().execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (_id TEXT PRIMARY KEY, '
            "_version INTEGER NOT NULL, doc TEXT NOT NULL)"
        )

    def ping(self) -> None:
        with self._checkout() as connection:
            connection.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
