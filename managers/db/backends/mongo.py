"""MongoDB through pymongo (experimental: tested against mongomock only, no server here).

Filter trees translate to Mongo filters with explicit ``$type`` guards, so a comparison
never matches another kind of value or an array's elements: the same semantics as the SQL
backends. Updates are read-modify-write guarded by ``_version`` (the reference
``apply_changes`` does the change), retried when another writer got there first.
Transactions need a replica set; elsewhere ``transaction()`` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from core.base.errors import Conflict, DependencyUnavailable
from core.contracts.documents import (
    ID_FIELD,
    VERSION_FIELD,
    And,
    Compare,
    Exists,
    In,
    Node,
    Not,
    Or,
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

_TYPES = {bool: "bool", int: "number", float: "number", str: "string"}
_NOT_ARRAY = {"$not": {"$type": "array"}}
_NOTHING: dict[str, Any] = {ID_FIELD: {"$in": []}}
_UPDATE_RETRIES = 20


def translate(node: Node) -> dict[str, Any]:
    """A Mongo filter with the semantics of ``core.contracts.documents.matches``."""
    if isinstance(node, And):
        return {"$and": [translate(n) for n in node.nodes]} if node.nodes else {}
    if isinstance(node, Or):
        return {"$or": [translate(n) for n in node.nodes]}
    if isinstance(node, Not):
        return {"$nor": [translate(node.node)]}
    name = ".".join(node.path)
    if isinstance(node, Exists):
        return {name: {"$exists": node.present}}
    if isinstance(node, In):
        if not node.values:
            return dict(_NOTHING)
        return {"$or": [translate(Compare(node.path, "$eq", v)) for v in node.values]}
    return _compare(name, node)


def _compare(name: str, node: Compare) -> dict[str, Any]:
    if node.value is None:
        # Null or missing, spelled out: {name: None} alone misses a path whose parent is a
        # scalar on some implementations (mongomock), while $exists is right everywhere.
        # And like every comparison here, it never looks inside an array.
        return {"$or": [{name: {"$exists": False}}, {"$and": [{name: None}, {name: _NOT_ARRAY}]}]}
    kind = _TYPES[type(node.value)]
    return {"$and": [{name: {node.op: node.value, "$type": kind}}, {name: _NOT_ARRAY}]}


class MongoCollection:
    """The document API over one Mongo collection."""

    def __init__(self, backend: MongoBackend, name: str) -> None:
        self._backend = backend
        self.name = name
        self._raw = backend.database[f"doc_{name}"]

    def _session(self) -> Any:
        return self._backend.current_session()

    def insert_one(self, doc: Mapping[str, Any]) -> str:
        doc_id, body = prepare_insert(doc)
        with self._backend.translated():
            self._raw.insert_one(
                {ID_FIELD: doc_id, VERSION_FIELD: 1, **body}, session=self._session()
            )
        return doc_id

    def insert_many(self, docs: Sequence[Mapping[str, Any]]) -> list[str]:
        import pymongo.errors

        prepared = [prepare_insert(doc) for doc in docs]
        if not prepared:
            return []
        ids = [i for i, _ in prepared]
        with self._backend.translated():
            try:
                self._raw.insert_many(
                    [{ID_FIELD: i, VERSION_FIELD: 1, **body} for i, body in prepared],
                    ordered=True,
                    session=self._session(),
                )
            except pymongo.errors.BulkWriteError as exc:
                # No transaction outside a replica set: take back what went in, so the
                # batch is all or nothing here too.
                done = int(exc.details.get("nInserted", 0))
                if done:
                    self._raw.delete_many({ID_FIELD: {"$in": ids[:done]}}, session=self._session())
                raise Conflict("a document with this id or unique key already exists") from exc
        return ids

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int | None = None,
        skip: int = 0,
    ) -> list[dict[str, Any]]:
        query = translate(parse_filter(filter))
        order = [(".".join(path), d) for path, d in parse_sort(sort)] + [(ID_FIELD, 1)]
        with self._backend.translated():
            cursor = self._raw.find(query, session=self._session()).sort(order)
            if skip:
                cursor = cursor.skip(int(skip))
            if limit is not None:
                if limit == 0:
                    return []
                cursor = cursor.limit(int(limit))
            return [dict(d) for d in cursor]

    def find_one(self, filter: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        found = self.find(filter, limit=1)
        return found[0] if found else None

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        with self._backend.translated():
            return int(
                self._raw.count_documents(translate(parse_filter(filter)), session=self._session())
            )

    def update_one(
        self,
        filter: Mapping[str, Any],
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> bool:
        parsed = parse_changes(changes)
        for _ in range(_UPDATE_RETRIES):
            current = self.find_one(filter)
            if current is None:
                return False
            doc_id, version = current.pop(ID_FIELD), current.pop(VERSION_FIELD)
            check_version(f"{self.name}/{doc_id}", version, expected_version)
            updated = apply_changes(current, parsed)
            with self._backend.translated():
                result = self._raw.replace_one(
                    {ID_FIELD: doc_id, VERSION_FIELD: version},
                    {VERSION_FIELD: version + 1, **updated},
                    session=self._session(),
                )
            if result.matched_count == 1:
                return True
        raise Conflict(f"{self.name}: too many concurrent writers; retry")

    def delete_one(self, filter: Mapping[str, Any]) -> bool:
        current = self.find_one(filter)
        if current is None:
            return False
        with self._backend.translated():
            result = self._raw.delete_one({ID_FIELD: current[ID_FIELD]}, session=self._session())
        return bool(result.deleted_count)

    def delete_many(self, filter: Mapping[str, Any]) -> int:
        query = translate(parse_filter(filter))
        with self._backend.translated():
            result = self._raw.delete_many(query, session=self._session())
        return int(result.deleted_count)

    def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None:
        names = [".".join(field_path(f)) for f in fields]
        options: dict[str, Any] = {"unique": unique}
        if unique:  # like SQL, documents missing the fields do not collide
            options["partialFilterExpression"] = {n: {"$exists": True} for n in names}
        with self._backend.translated():
            self._raw.create_index([(n, 1) for n in names], **options)


class MongoBackend:
    """``mongodb://host/db``; ``client_factory`` lets tests pass ``mongomock.MongoClient``."""

    def __init__(
        self, url: str, *, timeout: float, client_factory: Callable[..., Any] | None = None
    ) -> None:
        self._url = url
        self._timeout_ms = int(timeout * 1000)
        self._factory = client_factory
        self._local = threading.local()
        self.client: Any = None
        self.database: Any = None

    def describe(self) -> str:
        parts = urlsplit(self._url)
        return f"{parts.hostname or 'localhost'}{parts.path or '/'}"

    def start(self) -> None:
        if self._factory is None:
            import pymongo

            self._factory = pymongo.MongoClient
        self.client = self._factory(self._url, serverSelectionTimeoutMS=self._timeout_ms)
        name = urlsplit(self._url).path.lstrip("/") or "switchboard"
        self.database = self.client[name]
        self.ping()

    @contextmanager
    def translated(self) -> Iterator[None]:
        import pymongo.errors

        try:
            yield
        except pymongo.errors.DuplicateKeyError as exc:
            raise Conflict("a document with this id or unique key already exists") from exc
        except (
            pymongo.errors.ConnectionFailure,
            pymongo.errors.ServerSelectionTimeoutError,
        ) as exc:
            raise DependencyUnavailable(f"MongoDB at {self.describe()} is unavailable") from exc

    def ping(self) -> None:
        with self.translated():
            self.client.admin.command("ping")

    def trouble(self) -> Health | None:
        return None

    def current_session(self) -> Any:
        return getattr(self._local, "session", None)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.current_session() is not None:
            yield
            return
        import pymongo.errors

        try:
            session = self.client.start_session()
            session.start_transaction()
        except (NotImplementedError, pymongo.errors.PyMongoError) as exc:  # mongomock, standalone
            raise DependencyUnavailable(
                "MongoDB transactions need a replica set or sharded cluster (sessions are not "
                f"available here: {type(exc).__name__}); use single-document updates with "
                "expected_version instead"
            ) from exc
        self._local.session = session
        try:
            yield
        except BaseException:
            session.abort_transaction()
            raise
        else:
            with self.translated():
                session.commit_transaction()
        finally:
            self._local.session = None
            session.end_session()

    def collection(self, name: str) -> MongoCollection:
        return MongoCollection(self, collection_name(name))

    def rename_collection(self, old: str, new: str) -> bool:
        """Rename ``old`` to ``new`` (documents and indexes) unless ``new`` exists; False
        when there was nothing to do."""
        import pymongo.errors

        database = self.database
        source, target = f"doc_{collection_name(old)}", f"doc_{collection_name(new)}"
        with self.translated():
            names = set(database.list_collection_names())
            if source not in names or target in names:
                return False
            try:
                database[source].rename(target)
            except pymongo.errors.OperationFailure:  # another process renamed it first
                return False
        return True

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
