"""PostgreSQL through psycopg2: documents in JSONB, a pool that waits, a statement timeout.

psycopg2's ThreadedConnectionPool raises as soon as it is exhausted; a semaphore in front
of it makes a call wait up to ``database.pool_timeout`` for a free connection and then
answer 503. Connections that broke are thrown away, and opening one is retried with
backoff (``database.connect_retries``). Strings compare with ``COLLATE "C"`` (code point
order, whatever the database's collation), the same order SQLite and MongoDB use.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool

from core.base.errors import Conflict, DependencyUnavailable, Timeout, TransactionConflict
from core.base.retry import retrying
from managers.db.backends.sql import Session, SqlBackend
from managers.db.backends.sql_compiler import Dialect

T = TypeVar("T")


class PostgresDialect(Dialect):
    p = "%s"
    false = "false"
    json_column = "JSONB"

    def path_param(self, path: tuple[str, ...]) -> list[str]:
        return list(path)

    def kind(self) -> str:
        return "jsonb_typeof(doc #> %s::text[])"

    def kind_in(self, kind: str) -> tuple[str, ...]:
        return {
            "number": ("number",),
            "string": ("string",),
            "bool": ("boolean",),
            "null": ("null",),
            "object": ("object",),
            "array": ("array",),
        }[kind]

    def compare(self, kind: str, op: str) -> tuple[str, int]:
        if kind == "number":
            return f"(doc #>> %s::text[])::numeric {op} %s::numeric", 1
        return f'(doc #>> %s::text[]) COLLATE "C" {op} %s', 1

    def bool_equals(self, value: bool) -> tuple[str, int]:
        return f"doc #> %s::text[] = '{'true' if value else 'false'}'::jsonb", 1

    def sort_values(self, descending: bool) -> list[tuple[str, int]]:
        order = "DESC" if descending else "ASC"
        return [
            (
                "CASE WHEN jsonb_typeof(doc #> %s::text[]) = 'number' "
                f"THEN (doc #>> %s::text[])::numeric END {order}",
                2,
            ),
            (
                "CASE WHEN jsonb_typeof(doc #> %s::text[]) = 'string' "
                f'THEN (doc #>> %s::text[]) END COLLATE "C" {order}',
                2,
            ),
            (
                "CASE WHEN jsonb_typeof(doc #> %s::text[]) = 'boolean' "
                f"THEN (doc #>> %s::text[])::boolean END {order}",
                2,
            ),
        ]

    def dumps(self, doc: Mapping[str, Any]) -> str:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    def loads(self, raw: Any) -> dict[str, Any]:
        return raw if isinstance(raw, dict) else json.loads(raw)

    def index_expression(self, path: tuple[str, ...]) -> str:
        return f"(doc #>> '{{{','.join(path)}}}')"


class _Session:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def cursor(self) -> Any:
        return self.connection.cursor()


_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)


class _KeepingPool(psycopg2.pool.ThreadedConnectionPool):
    """psycopg2's pool closes every connection handed back beyond ``minconn`` and opens
    ``minconn`` of them at once: with 0, each query paid a new connection. This one opens
    connections as they are needed and keeps up to ``maxconn`` of them for the next."""

    def __init__(self, maxconn: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(0, maxconn, *args, **kwargs)
        self.minconn = maxconn  # what putconn keeps

    def discard_idle(self) -> None:
        """A connection just failed: the ones kept from before it most likely share its
        fate (the server restarted), so none of them is handed out again."""
        state = vars(self)  # psycopg2's own fields (its stubs do not declare them)
        with state["_lock"]:
            idle: list[Any] = state["_pool"]
            state["_pool"] = []
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()


class PostgresBackend(SqlBackend):
    """``postgresql://user:pass@host:port/db``."""

    dialect = PostgresDialect()
    for_update = " FOR UPDATE"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        pool_timeout: float,
        statement_timeout: float,
        connect_retries: int,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.read_only = read_only
        self._url = url
        self._pool_size = pool_size
        self._pool_timeout = pool_timeout
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._retries = connect_retries
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool: _KeepingPool | None = None

    def describe(self) -> str:
        """Host, port and database of the URL, never its password."""
        info = psycopg2.extensions.parse_dsn(self._url)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def start(self) -> None:
        self._pool = self._with_retries(
            lambda: _KeepingPool(
                self._pool_size,
                self._url,
                options=f"-c statement_timeout={self._statement_timeout_ms}",
                connect_timeout=max(1, int(self._pool_timeout)),
                # A kept connection to a host that vanished fails in about 40 s, not 15 min.
                keepalives=1,
                keepalives_idle=20,
                keepalives_interval=5,
                keepalives_count=4,
            )
        )
        self.ping()
        self.remember_tables()

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        try:
            return retrying(
                attempt, on=_TRANSIENT, retries=self._retries, first_wait=0.1, max_wait=2.0
            )
        except _TRANSIENT as exc:
            reason = str(exc).strip().splitlines()
            raise DependencyUnavailable(
                f"PostgreSQL at {self.describe()} is unreachable: "
                f"{reason[0] if reason else type(exc).__name__}"
            ) from exc

    @contextmanager
    def _checkout(self) -> Iterator[Any]:
        if self._pool is None:
            raise DependencyUnavailable("the database is not started")
        if not self._slots.acquire(timeout=self._pool_timeout):
            raise DependencyUnavailable(
                f"no free database connection within {self._pool_timeout:g}s "
                f"(database.pool_size={self._pool_size})"
            )
        pool = self._pool
        self.on_checkout(1)
        try:
            connection = self._with_retries(pool.getconn)
            broken = False
            try:
                yield connection
            except _TRANSIENT:
                broken = True
                pool.discard_idle()
                raise
            finally:
                ready = connection.status == psycopg2.extensions.STATUS_READY
                if not broken and not connection.closed and not ready:
                    connection.rollback()
                pool.putconn(connection, close=broken or bool(connection.closed))
        finally:
            self._slots.release()
            self.on_checkout(-1)

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Session]:
        with self._begin() as session:
            yield session

    @contextmanager
    def _begin(self) -> Iterator[Session]:
        with self._checkout() as connection:
            try:
                yield _Session(connection)
            except BaseException:
                if not connection.closed:
                    connection.rollback()
                raise
            connection.commit()

    def _translate(self, exc: Exception) -> Exception | None:
        if isinstance(exc, psycopg2.errors.UniqueViolation):
            return Conflict("a document with this id or unique key already exists")
        if isinstance(
            exc, (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)
        ):
            return TransactionConflict(
                "the transaction collided with another one; retry", headers={"Retry-After": "1"}
            )
        if isinstance(exc, psycopg2.errors.QueryCanceled):
            return Timeout("the database statement timed out")
        if isinstance(exc, _TRANSIENT):
            return DependencyUnavailable(f"PostgreSQL at {self.describe()} is unavailable")
        return None

    def _create_table(self, session: Session, table: str) -> None:
        cursor = session.cursor()
        # Concurrent first uses may race on the catalog: a lock makes them wait in turn.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
        cursor.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (_id TEXT PRIMARY KEY, '
            "_version BIGINT NOT NULL, doc JSONB NOT NULL)"
        )

    def _index_names(self, session: Session, table: str) -> list[str]:
        cursor = session.cursor()
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s",
            [table],
        )
        return [row[0] for row in cursor.fetchall()]

    def _rename_index(self, session: Session, old: str, new: str) -> None:
        session.cursor().execute(f'ALTER INDEX "{old}" RENAME TO "{new}"')

    def _list_tables(self, session: Session) -> set[str]:
        cursor = session.cursor()
        cursor.execute(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename LIKE 'doc\\_%%'"
        )
        return {row[0] for row in cursor.fetchall()}

    def ping(self) -> None:
        with self._translated(), self._checkout() as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            connection.rollback()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.closeall()
            self._pool = None
