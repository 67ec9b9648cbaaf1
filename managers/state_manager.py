"""StateManager: named state machines whose truth lives in the database.

Reads go through three tiers: this worker's memory (trusted for ``state.local_ttl``), the
shared store behind the ``redis`` manager, then the database. A transition is one
database transaction that re-reads the record and writes it only if its version is still
the one read, so of several concurrent transitions from the same version exactly one
wins. Once that transaction commits (the caller's own, if it runs inside one), the shared
copy is dropped, other workers are told to drop theirs (pub/sub), and hook
``state.changed`` fires. Dropping rather than writing the shared copy means two commits
can never leave the older record there.

A reader that misses both caches reads the database and refills the shared copy. A commit
can land between that read and the refill; so every commit first bumps the key's
generation in the store, and a reader that sees the generation move while it read takes
its refill back (and keeps the record out of its own memory too). Whichever of the two
runs last removes the older record, so it is never served past that moment.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import Conflict, DependencyUnavailable, NotFound, Problem, ValidationError
from core.base.hooks import HookBus
from core.base.store import KeyValueStore, Subscription
from core.config.settings import Setting, duration
from core.contracts.documents import Collection, check_version
from core.contracts.facades import Documents, StateMachines
from core.contracts.module import ModuleCatalog, resolve_ref
from core.contracts.state import Machine, parse_machine
from core.manager import Health, Manager

if TYPE_CHECKING:
    from core.manager import App

log = logging.getLogger("switchboard.state")

STATE_CHANGED = "state.changed"
CHANNEL = "state-invalidate"
SHARED_TTL = 5.0  # how long the shared copy lives without a commit
GENERATION_TTL = 300.0  # far longer than any read of one record takes


class StateManager(Manager):
    """``ctx.state``: create, get, transition, history and delete of machine instances."""

    name = "state"
    requires = ("config", "db", "redis", "hooks")
    provides: ClassVar[tuple[type, ...]] = (StateMachines,)
    facade = "state"
    events: ClassVar[tuple[str, ...]] = (STATE_CHANGED,)
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "state.local_ttl",
            duration,
            1.0,
            "How long a worker trusts its in-process copy of "
            "a state when an invalidation message is missed",
            owner="manager state",
        ),
    )

    def __init__(self) -> None:
        self._machines: dict[str, Machine] = {}
        self._local: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._db: Documents | None = None
        self._store: KeyValueStore | None = None
        self._hooks: HookBus | None = None
        self._local_ttl = 1.0

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        self._db = self.require(Documents)
        self._store = self.require(KeyValueStore)
        self._hooks = self.require(HookBus)
        self._local_ttl = float(app.config["state.local_ttl"])
        history = self._db.collection("sb_state_history")
        history.create_index(["kind", "id", "version"], unique=True)
        self._subscription = self._store.subscribe(CHANNEL, self._invalidated)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def health(self) -> Health:
        return Health("ok", {"machines": sorted(self._machines)})

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        """Define the machines module.yaml ``state_machines`` declare, before any module
        initializes."""
        problems: list[Problem] = []
        for loaded in modules:
            where: dict[str, Any] = {"file": loaded.manifest.file, "module": loaded.name}
            for name, spec in loaded.manifest.state_machines.items():
                machine, found = parse_machine(
                    f"{loaded.name}.{name}",
                    spec,
                    functools.partial(resolve_ref, loaded.name),
                    where,
                )
                problems.extend(found)
                if machine is not None:
                    self.define(machine)
        return problems

    def define(self, machine: Machine) -> None:
        """Register a machine (module.yaml ``state_machines`` arrive here at module load)."""
        if machine.kind in self._machines:
            raise ValueError(f"state machine {machine.kind!r} is defined twice")
        self._machines[machine.kind] = machine

    # --- the API ----------------------------------------------------------------------

    def create(self, kind: str, id: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A new instance in the machine's initial state; an existing id is a Conflict."""
        machine = self._machine(kind)
        key = _key(kind, id)
        now = time.time()
        body = {
            "kind": kind,
            "id": id,
            "state": machine.initial,
            "data": dict(data or {}),
            "updated_at": now,
        }

        def work() -> None:
            self._records().insert_one({"_id": key, **body})
            self._history().insert_one(
                {
                    "kind": kind,
                    "id": id,
                    "from": None,
                    "to": machine.initial,
                    "version": 1,
                    "at": now,
                }
            )

        database = self._database()
        database.run_transaction(work)
        record = {**body, "version": 1}
        database.after_commit(lambda: self._announce(key, record, None))
        return copy.deepcopy(record)

    def get(self, kind: str, id: str) -> dict[str, Any] | None:
        self._machine(kind)
        key = _key(kind, id)
        with self._lock:
            cached = self._local.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return copy.deepcopy(cached[1])
        store_up = True
        try:
            shared = self._store_().get(f"state:{key}")
        except DependencyUnavailable:  # the database is the truth: read it instead
            shared, store_up = None, False
        if shared is not None:
            record: dict[str, Any] = json.loads(shared)
        else:
            generation = self._generation(key) if store_up else None
            doc = self._records().find_one({"_id": key})
            if doc is None:
                return None
            record = _record(doc)
            if store_up and not self._refill(key, record, generation):
                return copy.deepcopy(record)  # already older than a commit: keep no copy
        self._remember(key, record)
        return copy.deepcopy(record)

    def _generation(self, key: str) -> bytes | None:
        try:
            return self._store_().get(f"state-gen:{key}")
        except DependencyUnavailable:
            return None

    def _refill(self, key: str, record: Mapping[str, Any], generation: bytes | None) -> bool:
        """Put ``record`` (read at ``generation``) in the shared copy; False (and the copy
        taken back) when a commit bumped the generation meanwhile."""
        store = self._store_()
        try:
            store.set(f"state:{key}", _dumps(record), ttl=SHARED_TTL, nx=True)
            if store.get(f"state-gen:{key}") == generation:
                return True
            store.delete(f"state:{key}")
        except DependencyUnavailable:
            pass
        return False

    def transition(
        self,
        kind: str,
        id: str,
        to: str,
        *,
        data: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Move to ``to``: 404 unknown instance, 409 illegal move, refused guard or moved
        version, 422 unknown state. ``data`` is merged into the instance's data."""
        machine = self._machine(kind)
        if to not in machine.states:
            raise ValidationError(f"{kind} has no state {to!r}")
        key = _key(kind, id)
        moved: dict[str, Any] = {}

        def work() -> None:
            doc = self._records().find_one({"_id": key})
            if doc is None:
                raise NotFound(f"no {kind} {id!r}")
            version = doc["_version"]
            check_version(f"{kind} {id!r}", version, expected_version)
            current = doc["state"]
            if not machine.allows(current, to):
                raise Conflict(f"{kind} {id!r} cannot go from {current!r} to {to!r}")
            guard = machine.guards.get(to)
            if guard is not None and not guard(_record(doc), to, dict(data or {})):
                raise Conflict(f"the guard of {kind} refused {current!r} -> {to!r}")
            now = time.time()
            merged = {**doc["data"], **(data or {})}
            # expected_version makes the write fail if anyone moved the record since it
            # was read inside this transaction: the database decides, not a cache.
            self._records().update_one(
                {"_id": key},
                {"$set": {"state": to, "data": merged, "updated_at": now}},
                expected_version=version,
            )
            self._history().insert_one(
                {
                    "kind": kind,
                    "id": id,
                    "from": current,
                    "to": to,
                    "version": version + 1,
                    "at": now,
                }
            )
            moved.update(
                kind=kind,
                id=id,
                state=to,
                data=merged,
                updated_at=now,
                version=version + 1,
                previous=current,
            )

        database = self._database()
        database.run_transaction(work)
        previous = moved.pop("previous")
        database.after_commit(lambda: self._announce(key, moved, previous))
        return copy.deepcopy(moved)

    def history(self, kind: str, id: str) -> list[dict[str, Any]]:
        self._machine(kind)
        entries = self._history().find({"kind": kind, "id": id}, sort=[("version", 1)])
        return [{k: e[k] for k in ("from", "to", "version", "at")} for e in entries]

    def delete(self, kind: str, id: str) -> bool:
        self._machine(kind)
        key = _key(kind, id)

        def work() -> bool:
            if not self._records().delete_one({"_id": key}):
                return False
            while self._history().delete_one({"kind": kind, "id": id}):
                pass
            return True

        database = self._database()
        deleted = database.run_transaction(work)
        if deleted:
            database.after_commit(lambda: self._announce(key, None, None))
        return deleted

    # --- tiers ------------------------------------------------------------------------

    def _announce(self, key: str, record: Mapping[str, Any] | None, previous: str | None) -> None:
        """After the commit: refresh this worker's copy, drop the shared one, tell the other
        workers, fire the hook. The commit stands even if the store is down: then the other
        workers catch up within ``state.local_ttl`` and the shared copy's TTL."""
        if record is None:
            self._forget(key)
        else:
            self._remember(key, copy.deepcopy(dict(record)))
        try:
            self._store_().incr(f"state-gen:{key}", ttl=GENERATION_TTL)
            self._store_().delete(f"state:{key}")
            self._store_().publish(CHANNEL, key)
        except DependencyUnavailable:
            log.warning(
                "state %s committed, but the shared store is unavailable: other "
                "workers will see it within state.local_ttl",
                key,
            )
        if record is not None and self._hooks is not None:
            self._hooks.emit(
                STATE_CHANGED,
                {
                    "kind": record["kind"],
                    "id": record["id"],
                    "from": previous,
                    "to": record["state"],
                    "version": record["version"],
                },
            )

    def _remember(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._local[key] = (time.monotonic() + self._local_ttl, record)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)

    def _invalidated(self, key: str) -> None:
        self._forget(key)

    # --- plumbing ---------------------------------------------------------------------

    def _machine(self, kind: str) -> Machine:
        machine = self._machines.get(kind)
        if machine is None:
            raise LookupError(f"no state machine {kind!r}; defined: {sorted(self._machines)}")
        return machine

    def _database(self) -> Documents:
        if self._db is None:
            raise self.not_started()
        return self._db

    def _store_(self) -> KeyValueStore:
        if self._store is None:
            raise self.not_started()
        return self._store

    def _records(self) -> Collection:
        return self._database().collection("sb_states")

    def _history(self) -> Collection:
        return self._database().collection("sb_state_history")


def _key(kind: str, id: str) -> str:
    if not isinstance(id, str) or not id or len(id) > 200:
        raise ValidationError("a state id is a non-empty string of at most 200 characters")
    return f"{kind}:{id}"


def _record(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": doc["kind"],
        "id": doc["id"],
        "state": doc["state"],
        "data": doc["data"],
        "updated_at": doc["updated_at"],
        "version": doc["_version"],
    }


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))
