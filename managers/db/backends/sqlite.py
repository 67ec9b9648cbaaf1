"""SQLite (stdlib sqlite3): the embedded default. WAL mode, one writer at a time.

Several threads share a small pool of connections; in WAL mode reads never wait for the
writer. SQLite admits one writer per file, so a process lets one of its threads at a time
ask for the lock (``BEGIN IMMEDIATE``: two writers never deadlock upgrading a read lock) and
queues at most ``waiting_writers`` others behind it. More writes wait for a place in that
queue while it moves; once the writer at its head has asked SQLite for the lock for a
quarter of a second (another process holds it), they answer 503 at once.
Each write waits at most ``lock_timeout`` in all (for its turn, then for another process
that holds the lock), then answers 503, so a held lock ties up a bounded number of threads
and ``/health/ready`` says ``degraded`` while writes time out.

A damaged file (``database disk image is malformed``) answers 503 on the calls that touch
it, fails ``/health/ready`` and is logged once a minute until ``PRAGMA quick_check`` passes.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.base.errors import Conflict, DependencyUnavailable
from core.manager import Health
from managers.db.backends.sql import Session, SqlBackend
from managers.db.backends.sql_compiler import Dialect

log = logging.getLogger("switchboard.db")

STUCK_AFTER = 0.25  # the writer at the head asked this long: the lock is held elsewhere
TROUBLE_WINDOW = 60.0  # a lock timeout keeps readiness degraded this long, or to a write
DAMAGE_LOG_EVERY = 60.0
RECHECK_EVERY = 30.0  # how often health runs quick_check on a damaged file
_DAMAGED = ("malformed", "not a database", "disk image", "corrupt")
_UNUSABLE = ("unable to open", "disk I/O", "is full", "readonly database")


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
        self,
        path: Path,
        *,
        pool_size: int,
        pool_timeout: float,
        lock_timeout: float,
        waiting_writers: int,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.path = path
        self._lock_timeout = lock_timeout
        self._pool_timeout = pool_timeout
        self._read_only = read_only
        self.read_only = read_only
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One writer of this process asks SQLite for the lock; a few more may queue.
        self._writer = threading.Lock()
        self._queue = threading.BoundedSemaphore(waiting_writers + 1)
        self._asking_since: float | None = None  # when the head writer asked SQLite
        self._timeouts: list[float] = []  # when writes last gave up on the lock
        self._damage: str | None = None
        self._damage_logged = self._damage_checked = -DAMAGE_LOG_EVERY

    def start(self) -> None:
        if not self._read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ping()
        self.remember_tables()

    def _open(self) -> sqlite3.Connection:
        target = f"file:{self.path}?mode=ro" if self._read_only else f"file:{self.path}"
        connection = sqlite3.connect(
            target,
            uri=True,
            timeout=self._lock_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._lock_timeout * 1000)}")
        if not self._read_only:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._all.append(connection)
        return connection

    @contextmanager
    def _checkout(self) -> Iterator[sqlite3.Connection]:
        if not self._slots.acquire(timeout=self._pool_timeout):
            raise DependencyUnavailable(f"no free SQLite connection within {self._pool_timeout:g}s")
        self.on_checkout(1)
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
            self.on_checkout(-1)

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
        deadline = time.monotonic() + self._lock_timeout
        self._join_queue(deadline)
        try:
            if not self._writer.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise self._gave_up(
                    f"the database lock was not free within {self._lock_timeout:g}s"
                )
            try:
                with self._checkout() as connection:
                    left = max(0.0, deadline - time.monotonic())
                    connection.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
                    self._asking_since = time.monotonic()
                    try:
                        connection.execute("BEGIN IMMEDIATE")
                    except sqlite3.OperationalError as exc:
                        if "locked" in str(exc) or "busy" in str(exc):
                            raise self._gave_up(
                                "another process held the database lock for "
                                f"{self._lock_timeout:g}s"
                            ) from exc
                        raise
                    finally:  # readers of this connection wait the whole timeout again
                        self._asking_since = None
                        connection.execute(
                            f"PRAGMA busy_timeout = {int(self._lock_timeout * 1000)}"
                        )
                    if self._timeouts:  # the lock is free again: no longer degraded
                        with self._lock:
                            self._timeouts.clear()
                    try:
                        yield _Session(connection)
                    except BaseException:
                        connection.rollback()
                        raise
                    connection.commit()
            finally:
                self._writer.release()
        finally:
            self._queue.release()

    def _join_queue(self, deadline: float) -> None:
        """A place among the writers of this process: at once when there is one; else wait
        for one, unless the lock is held elsewhere (the writer at the head has asked SQLite
        for it for ``STUCK_AFTER``): then the queue will not move, and the call answers 503
        instead of holding a thread that other calls need."""
        if self._queue.acquire(blocking=False):
            return
        while True:
            asking = self._asking_since
            now = time.monotonic()
            if asking is not None and now - asking > STUCK_AFTER:
                raise self._gave_up(
                    "the database lock is held elsewhere and enough writes already wait for it"
                )
            if now >= deadline:
                raise self._gave_up(f"no turn to write within {self._lock_timeout:g}s")
            if self._queue.acquire(timeout=min(0.05, deadline - now)):
                return

    def _gave_up(self, reason: str) -> DependencyUnavailable:
        now = time.monotonic()
        with self._lock:
            self._timeouts = [t for t in self._timeouts if now - t < TROUBLE_WINDOW] + [now]
        return DependencyUnavailable(f"the database is busy: {reason}; retry shortly")

    def _translate(self, exc: Exception) -> Exception | None:
        if isinstance(exc, sqlite3.IntegrityError):
            return Conflict("a document with this id or unique key already exists")
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        ):
            return self._gave_up(str(exc))
        if isinstance(exc, sqlite3.DatabaseError) and any(m in str(exc) for m in _DAMAGED):
            self._damaged(str(exc))
            return DependencyUnavailable("the database file is damaged")
        if isinstance(exc, sqlite3.OperationalError) and any(m in str(exc) for m in _UNUSABLE):
            return DependencyUnavailable(f"the database cannot be used: {exc}")
        return None

    def _damaged(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._damage = reason
            due = now - self._damage_logged >= DAMAGE_LOG_EVERY
            if due:
                self._damage_logged = now
        if due:  # once a minute, however many calls hit it
            log.error(
                "the SQLite file %s is damaged (%s): calls that touch it answer 503 and "
                "/health/ready fails until it is restored from a backup",
                self.path,
                reason,
            )

    def trouble(self) -> Health | None:
        now = time.monotonic()
        if self._damage is not None and now - self._damage_checked >= RECHECK_EVERY:
            self._damage_checked = now
            self._recheck()
        if self._damage is not None:
            return Health("failed", {"error": "the database file is damaged"})
        with self._lock:
            recent = sum(1 for t in self._timeouts if now - t < TROUBLE_WINDOW)
        if recent:
            return Health(
                "degraded",
                {"error": f"{recent} writes gave up waiting for the lock in the last minute"},
            )
        return None

    def _recheck(self) -> None:
        """Clear the damage once SQLite's own check passes (the file was restored)."""
        try:
            with self._checkout() as connection:
                verdict = connection.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            self._damaged(str(exc))
            return
        if verdict and verdict[0] == "ok":
            with self._lock:
                self._damage = None
            log.warning("the SQLite file %s passes quick_check again", self.path)

    def _create_table(self, session: Session, table: str) -> None:
        session.cursor().execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (_id TEXT PRIMARY KEY, '
            "_version INTEGER NOT NULL, doc TEXT NOT NULL)"
        )

    def _index_names(self, session: Session, table: str) -> list[str]:
        cursor = session.cursor()
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            [table],
        )
        return [row[0] for row in cursor.fetchall()]

    def _rename_index(self, session: Session, old: str, new: str) -> None:
        # SQLite cannot rename an index: it is made again under the new name (the
        # definition already names the renamed table), in the same transaction.
        cursor = session.cursor()
        cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", [old])
        definition = str(cursor.fetchone()[0])
        cursor.execute(f'DROP INDEX "{old}"')
        cursor.execute(definition.replace(f'"{old}"', f'"{new}"', 1))

    def _list_tables(self, session: Session) -> set[str]:
        cursor = session.cursor()
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'doc_%'")
        return {row[0] for row in cursor.fetchall()}

    def ping(self) -> None:
        """Reads the schema page: an unreadable or foreign file fails here."""
        with self._translated(), self._checkout() as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
