"""DatabaseManager: the backend chosen by ``database.url``, and ``ctx.db`` for handlers."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from core.base.errors import ConfigError, DependencyUnavailable, Problem, TransactionConflict
from core.base.metrics import Instruments
from core.base.retry import retrying
from core.config.config import Config
from core.config.settings import Setting, duration, integer, text
from core.contracts.documents import RESERVED_PREFIX, Collection
from core.contracts.facades import Documents
from core.manager import Health, Manager
from managers.db.backends.sql import SqlBackend

if TYPE_CHECKING:
    from core.contracts.module import ModuleCatalog
    from core.manager import App

log = logging.getLogger("switchboard.db")
T = TypeVar("T")
_OWNER = "manager db"


class Backend(Protocol):
    """What every database backend provides (see managers/db_backends)."""

    def start(self) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def collection(self, name: str) -> Collection: ...

    def rename_collection(self, old: str, new: str) -> bool: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def trouble(self) -> Health | None:
        """What is wrong while the backend still answers pings (None: nothing)."""
        ...


def _sqlite(url: str, config: Config, *, read_only: bool = False) -> Backend:
    from managers.db.backends.sqlite import SqliteBackend

    # sqlite:///var/x.db is relative to the project; sqlite:////abs/x.db is absolute.
    raw = urlsplit(url).path
    path = Path(raw[1:]) if raw.startswith("/") else Path(raw)
    if not str(path) or str(path) == ".":
        raise ConfigError(
            [
                Problem(
                    "a sqlite URL needs a file path, e.g. sqlite:///var/switchboard.db",
                    field="database.url",
                )
            ]
        )
    pool_size = int(config["database.pool_size"])
    return SqliteBackend(
        config.path(str(path)),
        pool_size=pool_size,
        pool_timeout=config["database.pool_timeout"],
        lock_timeout=config["database.lock_timeout"],
        # Writers waiting for the lock hold threads: leave half of them to other calls.
        waiting_writers=max(1, min(pool_size, int(config["http.threads"]) // 2)),
        read_only=read_only,
    )


def _postgres(url: str, config: Config, *, read_only: bool = False) -> Backend:
    from managers.db.backends.postgres import PostgresBackend

    return PostgresBackend(
        url,
        pool_size=config["database.pool_size"],
        pool_timeout=config["database.pool_timeout"],
        statement_timeout=config["database.statement_timeout"],
        connect_retries=config["database.connect_retries"],
        read_only=read_only,
    )


def _mongo(url: str, config: Config, *, read_only: bool = False) -> Backend:
    from managers.db.backends.mongo import MongoBackend

    return MongoBackend(url, timeout=config["database.pool_timeout"])


# The registry of URL schemes: backends import their driver only when chosen.
BACKENDS: Mapping[str, Callable[..., Backend]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
    "mongodb": _mongo,
    "mongodb+srv": _mongo,
}


def create_backend(url: str, config: Config, *, read_only: bool = False) -> Backend:
    scheme = urlsplit(url).scheme
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise ConfigError(
            [
                Problem(
                    f"unsupported database scheme {scheme!r}; "
                    f"use one of {', '.join(sorted(BACKENDS))}",
                    field="database.read_url" if read_only else "database.url",
                )
            ]
        )
    return factory(url, config, read_only=read_only)


class _RoutedCollection:
    """Writes and reads inside a transaction go to the primary, other reads to the replica."""

    def __init__(self, primary: Collection, replica: Collection, database: Database) -> None:
        self._primary = primary
        self._replica = replica
        self._database = database

    def _reader(self) -> Collection:
        return self._primary if self._database.in_transaction() else self._replica

    def find(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._reader().find(*args, **kwargs)

    def find_one(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        return self._reader().find_one(*args, **kwargs)

    def count(self, *args: Any, **kwargs: Any) -> int:
        return self._reader().count(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._primary, name)


class Database:
    """``ctx.db``: collections, transactions, and a retrying transaction runner."""

    def __init__(self, primary: Backend, replica: Backend | None = None) -> None:
        self._primary = primary
        self._replica = replica
        self._local = threading.local()

    def collection(self, name: str) -> Collection:
        primary = self._primary.collection(name)
        if self._replica is None:
            return primary
        return _RoutedCollection(primary, self._replica.collection(name), self)

    def rename_collection(self, old: str, new: str) -> bool:
        """Rename ``old`` to ``new`` with its documents and indexes (a migration, run at
        start); False when ``old`` does not exist or ``new`` already does."""
        return self._primary.rename_collection(old, new)

    def in_transaction(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything this thread does with ``ctx.db`` inside the block commits together or
        not at all; nested blocks join the outer one."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.after = []
        self._local.depth = depth + 1
        committed = False
        try:
            with self._primary.transaction():
                yield
            committed = True
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                pending, self._local.after = self._local.after, []
                if committed:
                    for callback in pending:
                        callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the outermost transaction commits (never if it rolls back);
        outside a transaction, run it now."""
        if self.in_transaction():
            self._local.after.append(callback)
        else:
            callback()

    def run_transaction(self, work: Callable[[], T], *, retries: int = 5) -> T:
        """Run ``work()`` in a transaction, again (with backoff) when it loses a race."""

        def attempt() -> T:
            with self.transaction():
                return work()

        return retrying(attempt, on=TransactionConflict, retries=retries)


class ModuleDatabase:
    """``ctx.db`` of a module that does not list ``db`` in module.yaml ``requires``: the
    app's database without the runtime's own collections (``sb_*``)."""

    def __init__(self, database: Database, module: str) -> None:
        self._database = database
        self._module = module

    def _check(self, name: str) -> str:
        if isinstance(name, str) and name.startswith(RESERVED_PREFIX):
            raise PermissionError(
                f"module {self._module!r}: collection {name!r} is the runtime's own "
                f"({RESERVED_PREFIX}*); only modules that list 'db' in module.yaml requires "
                "may use it"
            )
        return name

    def collection(self, name: str) -> Collection:
        return self._database.collection(self._check(name))

    def rename_collection(self, old: str, new: str) -> bool:
        return self._database.rename_collection(self._check(old), self._check(new))

    def __getattr__(self, name: str) -> Any:  # transactions: the app's own
        return getattr(self._database, name)


class DatabaseManager(Manager):
    """``database.url`` picks SQLite, PostgreSQL or MongoDB; ``database.read_url`` adds a
    read-only role for reads outside transactions."""

    name = "db"
    requires = ("config",)
    provides: ClassVar[tuple[type, ...]] = (Documents,)
    facade = "db"
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "database.url",
            text,
            "sqlite:///var/switchboard.db",
            "sqlite:///relative/path, sqlite:////absolute/path, postgresql://… or mongodb://…",
            alias="DATABASE_URL",
            secret=True,
            owner=_OWNER,
        ),
        Setting(
            "database.read_url",
            text,
            None,
            "Optional URL of a read-only role for reads outside transactions",
            alias="DATABASE_READ_URL",
            secret=True,
            owner=_OWNER,
        ),
        Setting(
            "database.pool_size",
            integer,
            10,
            "Connections per worker process (PostgreSQL, SQLite)",
            minimum=1,
            maximum=500,
            owner=_OWNER,
        ),
        Setting(
            "database.pool_timeout",
            duration,
            5.0,
            "How long a call waits for a free connection before answering 503",
            owner=_OWNER,
        ),
        Setting(
            "database.statement_timeout",
            duration,
            30.0,
            "PostgreSQL statement_timeout (504 past it)",
            owner=_OWNER,
        ),
        Setting(
            "database.lock_timeout",
            duration,
            5.0,
            "SQLite: how long a write waits for the database lock before answering 503",
            owner=_OWNER,
        ),
        Setting(
            "database.connect_retries",
            integer,
            3,
            "Retries of a transient connection error (with backoff)",
            minimum=0,
            maximum=10,
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.replica: Backend | None = None
        self.database: Database | None = None
        self.scheme = ""
        self._trusted: frozenset[str] = frozenset()

    def start(self, app: App) -> None:
        config = app.config
        url = config["database.url"]
        self.scheme = urlsplit(url).scheme
        backend = create_backend(url, config)
        replica = None
        if config["database.read_url"]:
            replica = create_backend(config["database.read_url"], config, read_only=True)
        started: list[Backend] = []
        try:
            for part in (backend, replica):
                if part is not None:
                    part.start()
                    started.append(part)
        except DependencyUnavailable as exc:
            for part in started:
                part.close()
            raise ConfigError(
                [Problem(f"cannot connect: {exc.detail}", field="database.url")]
            ) from exc
        metrics = app.capability(Instruments)
        for part in (backend, replica):
            if metrics is not None and isinstance(part, SqlBackend):
                part.on_checkout = metrics.pool_in_use
        self.backend, self.replica = backend, replica
        self.database = Database(backend, replica)
        log.info("database ready (%s)", self.scheme)

    @property
    def documents(self) -> Database:
        """``ctx.db`` (the same object for every module)."""
        if self.database is None:
            raise self.not_started()
        return self.database

    def capability(self, kind: type[T]) -> T:
        return cast(T, self.documents)

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        self._trusted = frozenset(m.name for m in modules if self.name in m.manifest.requires)
        return ()

    def facade_for(self, module: str) -> Database | ModuleDatabase:
        """The database; without the ``sb_*`` collections unless the module requires db."""
        if module in self._trusted:
            return self.documents
        return ModuleDatabase(self.documents, module)

    def health(self) -> Health:
        if self.backend is None:
            return Health("failed", {"backend": self.scheme, "error": "not started"})
        details: dict[str, Any] = {"backend": self.scheme}
        for label, part in (("primary", self.backend), ("replica", self.replica)):
            if part is None:
                continue
            try:
                part.ping()
            except DependencyUnavailable as exc:
                details[label] = "unreachable"
                details["error"] = exc.detail
                return Health("failed", details)
            trouble = part.trouble()
            if trouble is not None:
                return Health(trouble.status, {**details, label: trouble.details})
        return Health("ok", details)

    def stop(self) -> None:
        for part in (self.replica, self.backend):
            if part is not None:
                part.close()
        self.backend = self.replica = None
        self.database = None
