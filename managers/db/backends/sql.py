"""Documents on SQL: one table per collection (``_id``, ``_version``, ``doc`` as JSON).

Filters arrive as the validated trees of ``core.documents`` and compile to SQL whose only
caller-controlled parts are bound parameters; the JSON paths are bound too. Writes read the
document, apply the change in Python (the reference ``apply_changes``) and write it back
guarded by its version, inside one database transaction. The two dialects differ only in
how they ask a JSON path for its kind and its value.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol

from core.base.errors import Conflict, FieldError, ValidationError
from core.contracts.documents import (
    ID_FIELD,
    VERSION_FIELD,
    apply_changes,
    check_version,
    collection_name,
    field_path,
    parse_changes,
    parse_filter,
    parse_sort,
    prepare_insert,
)
from core.manager import Health
from managers.db.backends.sql_compiler import Compiler, Dialect, Params


class Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Session(Protocol):
    """One connection, inside or outside a transaction."""

    def cursor(self) -> Cursor: ...


class SqlBackend(ABC):
    """Connection handling is the engine's; documents, filters and versions are shared."""

    dialect: Dialect

    def __init__(self) -> None:
        self._local = threading.local()
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self.compiler = Compiler(self.dialect)
        # Told +1 / -1 as connections are checked out and back (metrics' pool gauge).
        self.on_checkout: Callable[[int], None] = _ignore

    # --- engine specifics -------------------------------------------------------------

    @abstractmethod
    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Session]:
        """A session for one operation: ``write`` runs it in its own transaction."""

    @abstractmethod
    @contextmanager
    def _begin(self) -> Iterator[Session]:
        """A session in a transaction that commits when the block ends without error."""

    @abstractmethod
    def _translate(self, exc: Exception) -> Exception | None:
        """The ``core.errors`` error for a driver error, or None to let it propagate."""

    @abstractmethod
    def _create_table(self, session: Session, table: str) -> None: ...

    @abstractmethod
    def _list_tables(self, session: Session) -> set[str]:
        """The names of the collection tables (``doc_*``) that exist."""

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def trouble(self) -> Health | None:
        """What is wrong while pings still pass (the engine's to say)."""
        return None

    for_update = ""  # row lock clause of the engine (SQLite locks the whole file instead)
    read_only = False  # a DATABASE_READ_URL backend: never creates tables

    # --- sessions ---------------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool) -> Iterator[Session]:
        """The thread's open transaction if there is one, else a fresh session."""
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current
            return
        with self._translated(), self._connect(write=write) as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything this thread does with the database inside the block is atomic.

        Nested blocks join the outer transaction.
        """
        if getattr(self._local, "session", None) is not None:
            yield
            return
        self._local.created = set()
        with self._translated(), self._begin() as session:
            self._local.session = session
            try:
                yield
            finally:
                self._local.session = None
        # Committed: the tables it created exist now (a rollback would have undone them).
        with self._known_lock:
            self._known.update(self._local.created)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            translated = self._translate(exc)
            if translated is None or translated is exc:
                raise
            raise translated from exc

    def remember_tables(self) -> None:
        """Learn the tables that exist (at start): a first read or write of a collection
        that exists then takes no catalog query and no lock."""
        with self._translated(), self._connect(write=False) as session:
            found = self._list_tables(session)
        with self._known_lock:
            self._known.update(found)

    def existing_table(self, name: str) -> str | None:
        """The collection's table if it exists, else None: reads never create a table
        (creating one takes a write lock that a read must not wait for)."""
        table = f"doc_{collection_name(name)}"
        if table in self._known:
            return table
        current = getattr(self._local, "session", None)
        if current is not None:
            return table if table in self._list_tables(current) else None
        with self._translated(), self._connect(write=False) as session:
            exists = table in self._list_tables(session)
        if exists:
            with self._known_lock:
                self._known.add(table)
        return table if exists else None

    def ensure_table(self, name: str) -> str:
        """The collection's table, created on first write in a session of its own so a
        rolled back operation never leaves the cache claiming a table that is not there."""
        table = f"doc_{collection_name(name)}"
        if table in self._known or self.read_only:  # a replica gets tables from the primary
            return table
        current = getattr(self._local, "session", None)
        if current is not None:  # inside a transaction: created (and undone) with it
            self._create_table(current, table)
            self._local.created.add(table)
            return table
        with self._translated(), self._connect(write=True) as session:
            self._create_table(session, table)
        with self._known_lock:
            self._known.add(table)
        return table

    def collection(self, name: str) -> SqlCollection:
        return SqlCollection(self, collection_name(name))

    @abstractmethod
    def _index_names(self, session: Session, table: str) -> list[str]:
        """The names of the indexes on ``table``."""

    @abstractmethod
    def _rename_index(self, session: Session, old: str, new: str) -> None: ...

    def rename_collection(self, old: str, new: str) -> bool:
        """Rename collection ``old`` to ``new`` with its documents and indexes, in one
        transaction; False (nothing done) unless ``old`` exists and ``new`` does not."""
        old_table, new_table = f"doc_{collection_name(old)}", f"doc_{collection_name(new)}"
        prefix = f"ix_{old}_"
        try:
            with self._translated(), self._begin() as session:
                tables = self._list_tables(session)
                if old_table not in tables or new_table in tables:
                    return False
                session.cursor().execute(f'ALTER TABLE "{old_table}" RENAME TO "{new_table}"')
                for index in self._index_names(session, new_table):
                    if index.startswith(prefix):
                        self._rename_index(session, index, f"ix_{new}_{index[len(prefix) :]}")
        except Exception:
            # Workers starting together: another one renamed it between our look at the
            # catalog and the ALTER (PostgreSQL's DDL lock lets ours fail only then).
            with self._translated(), self._connect(write=False) as session:
                tables = self._list_tables(session)
            if old_table not in tables and new_table in tables:
                return False
            raise
        with self._known_lock:
            self._known.discard(old_table)
            self._known.add(new_table)
        return True


class SqlCollection:
    """The document API over one table."""

    def __init__(self, backend: SqlBackend, name: str) -> None:
        self._backend = backend
        self._dialect = backend.dialect
        self.name = name

    def _row(self, row: Any) -> dict[str, Any]:
        doc = self._dialect.loads(row[2])
        return {ID_FIELD: row[0], VERSION_FIELD: int(row[1]), **doc}

    def _select(
        self,
        session: Session,
        table: str,
        filter: Mapping[str, Any] | None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int | None = None,
        skip: int = 0,
        lock: bool = False,
    ) -> list[dict[str, Any]]:
        where, params = self._backend.compiler.where(parse_filter(filter))
        order, order_params = self._backend.compiler.order_by(parse_sort(sort))
        sql = f'SELECT _id, _version, doc FROM "{table}" WHERE {where} ORDER BY {order}'
        p = self._dialect.p
        tail: Params = []
        if limit is not None:
            sql += f" LIMIT {p}"
            tail.append(_count(limit, "limit"))
        elif skip:
            sql += " LIMIT -1" if p == "?" else " LIMIT ALL"
        if skip:
            sql += f" OFFSET {p}"
            tail.append(_count(skip, "skip"))
        if lock:
            sql += self._backend.for_update
        cursor = session.cursor()
        cursor.execute(sql, [*params, *order_params, *tail])
        return [self._row(r) for r in cursor.fetchall()]

    def insert_one(self, doc: Mapping[str, Any]) -> str:
        doc_id, body = prepare_insert(doc)
        table = self._backend.ensure_table(self.name)
        with self._backend.session(write=True) as session:
            p = self._dialect.p
            session.cursor().execute(
                f'INSERT INTO "{table}" (_id, _version, doc) VALUES ({p}, 1, {p})',
                [doc_id, self._dialect.dumps(body)],
            )
        return str(doc_id)

    def insert_many(self, docs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert ``docs`` in one statement batch and one transaction (all or none)."""
        prepared = [prepare_insert(doc) for doc in docs]
        if not prepared:
            return []
        table = self._backend.ensure_table(self.name)
        dumps = self._dialect.dumps
        with self._backend.session(write=True) as session:
            p = self._dialect.p
            session.cursor().executemany(
                f'INSERT INTO "{table}" (_id, _version, doc) VALUES ({p}, 1, {p})',
                [[doc_id, dumps(body)] for doc_id, body in prepared],
            )
        return [str(doc_id) for doc_id, _ in prepared]

    def find_one(self, filter: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        found = self.find(filter, limit=1)
        return found[0] if found else None

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int | None = None,
        skip: int = 0,
    ) -> list[dict[str, Any]]:
        table = self._backend.existing_table(self.name)
        if table is None:  # nothing to find; bad arguments are refused all the same
            parse_filter(filter), parse_sort(sort)
            _count(limit or 0, "limit"), _count(skip, "skip")
            return []
        with self._backend.session(write=False) as session:
            return self._select(session, table, filter, sort=sort, limit=limit, skip=skip)

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        where, params = self._backend.compiler.where(parse_filter(filter))
        table = self._backend.existing_table(self.name)
        if table is None:
            return 0
        with self._backend.session(write=False) as session:
            cursor = session.cursor()
            cursor.execute(f'SELECT COUNT(*) FROM "{table}" WHERE {where}', params)
            return int(cursor.fetchone()[0])

    def update_one(
        self,
        filter: Mapping[str, Any],
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> bool:
        parsed = parse_changes(changes)
        table = self._backend.existing_table(self.name)
        if table is None:
            parse_filter(filter)
            return False
        with self._backend.session(write=True) as session:
            found = self._select(session, table, filter, limit=1, lock=True)
            if not found:
                return False
            current = found[0]
            version = current.pop(VERSION_FIELD)
            doc_id = current.pop(ID_FIELD)
            check_version(f"{self.name}/{doc_id}", version, expected_version)
            updated = apply_changes(current, parsed)
            p = self._dialect.p
            cursor = session.cursor()
            cursor.execute(
                f'UPDATE "{table}" SET doc = {p}, _version = _version + 1 '
                f"WHERE _id = {p} AND _version = {p}",
                [self._dialect.dumps(updated), doc_id, version],
            )
            if cursor.rowcount != 1:  # only possible without row locks: another writer won
                raise Conflict(f"{self.name}/{doc_id} changed concurrently; retry")
            return True

    def delete_one(self, filter: Mapping[str, Any]) -> bool:
        table = self._backend.existing_table(self.name)
        if table is None:
            parse_filter(filter)
            return False
        with self._backend.session(write=True) as session:
            found = self._select(session, table, filter, limit=1, lock=True)
            if not found:
                return False
            cursor = session.cursor()
            cursor.execute(
                f'DELETE FROM "{table}" WHERE _id = {self._dialect.p}', [found[0][ID_FIELD]]
            )
            return True

    def delete_many(self, filter: Mapping[str, Any]) -> int:
        """Delete every document ``filter`` matches; how many there were."""
        where, params = self._backend.compiler.where(parse_filter(filter))
        table = self._backend.existing_table(self.name)
        if table is None:
            return 0
        with self._backend.session(write=True) as session:
            cursor = session.cursor()
            cursor.execute(f'DELETE FROM "{table}" WHERE {where}', params)
            return max(int(cursor.rowcount), 0)

    def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None:
        paths = [field_path(f) for f in fields]
        if not paths:
            raise_bad("create_index needs at least one field")
        terms = ", ".join(
            p[0]
            if p[0] in (ID_FIELD, VERSION_FIELD) and len(p) == 1
            else self._dialect.index_expression(p)
            for p in paths
        )
        name = "ix_" + self.name + "_" + "_".join("_".join(p) for p in paths)
        if len(name) > 60:
            name = f"ix_{self.name}_{uuid.uuid5(uuid.NAMESPACE_OID, name).hex[:16]}"
        table = self._backend.ensure_table(self.name)
        with self._backend.session(write=True) as session:
            session.cursor().execute(
                f'CREATE {"UNIQUE " if unique else ""}INDEX IF NOT EXISTS "{name}" '
                f'ON "{table}" ({terms})'
            )


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise_bad(f"{what} must be a non-negative integer")
    return int(value)


def raise_bad(message: str) -> NoReturn:
    raise ValidationError(message, errors=[FieldError("/", message)])


def _ignore(_delta: int) -> None:
    pass
