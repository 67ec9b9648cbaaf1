"""AuditManager: every call's audit record kept in the database (collection ``sb_audit``).

The call chain's audit step hands each record over (``AuditSink.record``: a deque append,
no lock, no wake-up); one writer thread per process wakes every ``audit.flush_interval`` and
inserts what is pending in batches, each batch one statement and one transaction. When the
database is unavailable the batch is kept and tried again with backoff (up to
``audit.queue_size`` records; beyond that the oldest are dropped and counted).
``stop`` writes what is queued before the database closes, so a graceful shutdown loses
nothing. Records older than ``audit.retention`` are deleted in the background.

Ids sort by time (nanoseconds, then a random suffix), so ``audit.search`` pages newest first
by ``_id`` alone.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import ActionError, ValidationError
from core.config.settings import Setting, boolean, duration, integer
from core.contracts.facades import Documents
from core.manager import Health, Manager
from core.pipeline.audit import AuditSink

if TYPE_CHECKING:
    from core.manager import App

log = logging.getLogger("switchboard.audit_store")

COLLECTION = "sb_audit"  # "audit" before 0.2: renamed at start
_OWNER = "manager audit"
PRUNE_EVERY = 3600.0
RETRY_AFTER = (0.5, 1.0, 2.0, 5.0, 10.0)
LOG_EVERY = 60.0
MAX_TEXT = 200


class AuditManager(Manager):
    name = "audit"
    requires = ("config", "db")
    provides: ClassVar[tuple[type, ...]] = (AuditSink,)
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "audit.store",
            boolean,
            True,
            "Keep audit records in the database (audit.search); the log line stays either way",
            owner=_OWNER,
        ),
        Setting(
            "audit.retention",
            duration,
            30 * 86400.0,
            "How long records are kept before the background pruning deletes them",
            owner=_OWNER,
        ),
        Setting(
            "audit.batch_size",
            integer,
            200,
            "Records written in one transaction",
            minimum=1,
            maximum=10000,
            owner=_OWNER,
        ),
        Setting(
            "audit.flush_interval",
            duration,
            1.0,
            "How long a record may wait for its batch",
            owner=_OWNER,
        ),
        Setting(
            "audit.queue_size",
            integer,
            100_000,
            "Records held while the database is unavailable; beyond it the oldest are dropped",
            minimum=100,
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        # Records waiting for the writer: appended without a lock or a wake-up (the writer
        # drains every flush interval), so a call never hands the GIL to it.
        self._pending: deque[dict[str, Any]] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._db: Documents | None = None
        self._enabled = False
        self._dropped = 0
        self._failing: str | None = None
        self._logged = -LOG_EVERY
        self._pruned = -PRUNE_EVERY

    def start(self, app: App) -> None:
        config = app.config
        self._enabled = bool(config["audit.store"])
        if not self._enabled:
            return
        self._db = self.require(Documents)
        self._retention = float(config["audit.retention"])
        self._batch = int(config["audit.batch_size"])
        self._interval = float(config["audit.flush_interval"])
        self._limit = int(config["audit.queue_size"])
        if self._db.rename_collection("audit", COLLECTION):
            log.info(
                "audit: collection 'audit' renamed to %r (the runtime's own names)", COLLECTION
            )
        collection = self._db.collection(COLLECTION)
        for fields in (["at"], ["caller_id"], ["action"]):
            collection.create_index(fields)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        thread.join()
        self._thread = None
        pending = len(self._pending)
        if pending:
            log.error("%d audit records were not written: the database is unavailable", pending)

    def health(self) -> Health:
        if not self._enabled:
            return Health("disabled")
        details: dict[str, Any] = {"queued": len(self._pending)}
        if self._dropped:
            details["dropped"] = self._dropped
        if self._failing is not None:
            return Health("degraded", {**details, "error": self._failing})
        return Health("ok", details)

    def capability(self, kind: type[Any]) -> Any:
        return self if self._enabled else None

    # --- AuditSink --------------------------------------------------------------------

    def record(self, entry: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(self._pending) >= self._limit:
            try:
                self._pending.popleft()  # the oldest goes: the newest say most
                self._dropped += 1
            except IndexError:
                pass
        self._pending.append(entry)

    # --- the writer -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            stopping = self._stopping.wait(
                self._interval if not failures else RETRY_AFTER[min(failures, len(RETRY_AFTER)) - 1]
            )
            if self._drain():
                failures = 0
            else:
                failures += 1
                if stopping and failures > len(RETRY_AFTER):
                    return  # stop() reports what is left
                continue
            if stopping:
                return
            if time.monotonic() - self._pruned >= PRUNE_EVERY:
                self._prune()

    def _drain(self) -> bool:
        """Write everything pending, ``audit.batch_size`` records a transaction; what the
        database could not take goes back to the front (False)."""
        while self._pending:
            batch: list[dict[str, Any]] = []
            while self._pending and len(batch) < self._batch:
                batch.append(self._pending.popleft())
            left = self._write(batch)
            if left:
                self._pending.extendleft(reversed(left))
                return False
        return True

    def _write(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert ``batch``; the records still to write (empty: all done)."""
        db = self._db
        if db is None:
            return batch
        collection = db.collection(COLLECTION)
        try:
            collection.insert_many([_document(entry) for entry in batch])  # one transaction
        except ValidationError:  # a record the store refuses: write the others one by one
            return self._write_each(batch)
        except ActionError as error:
            self._trouble(f"{error.title}: {error.detail}")
            return batch
        except Exception as exc:  # the writer must outlive any surprise of the store
            log.exception("audit batch of %d records failed", len(batch))
            self._trouble(type(exc).__name__)
            return batch
        if self._failing is not None:
            log.warning("audit records are written again")
            self._failing = None
        return []

    def _write_each(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        collection = self._db.collection(COLLECTION) if self._db is not None else None
        for index, entry in enumerate(batch):
            if collection is None:
                return batch[index:]
            try:
                collection.insert_many([_document(entry)])
            except ValidationError as error:  # names the field, never its value
                self._dropped += 1
                log.warning("an audit record of %s was refused: %s", entry.get("action"), error)
            except ActionError as error:
                self._trouble(f"{error.title}: {error.detail}")
                return batch[index:]
        return []

    def _trouble(self, reason: str) -> None:
        self._failing = reason
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            held = len(self._pending)
            log.warning("audit records are held (%d) and retried: %s", held, reason)

    def _prune(self) -> None:
        self._pruned = time.monotonic()
        db = self._db
        if db is None:
            return
        cutoff = time.time() - self._retention
        try:
            removed = db.collection(COLLECTION).delete_many({"at": {"$lt": cutoff}})
        except ActionError as error:
            log.warning("audit pruning failed: %s", error.detail or error.title)
            return
        if removed:
            log.info("audit pruning removed %d records older than the retention", removed)


def _document(entry: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a record: a time-ordered id, the time as text too, and caller
    text (an undeclared action's name) made safe to store."""
    at = float(entry["at"])
    document = dict(entry)
    document["_id"] = f"{int(at * 1e9):020d}-{secrets.token_hex(4)}"
    moment = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    document["time"] = moment.replace("+00:00", "Z")
    if not entry.get("known"):
        document["action"] = _printable(str(entry.get("action", "")))
    if document.get("client_ip") is not None:
        document["client_ip"] = _printable(str(document["client_ip"]))
    return document


def _printable(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:MAX_TEXT])
    return cleaned + ("…" if len(text) > MAX_TEXT else "")
