"""The execution records: one document each in ``sb_executions``, moved from status to
status by conditional updates (a record leaves ``queued`` once, whoever asks first)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from core.base.errors import ValidationError
from core.contracts.context import Caller
from core.contracts.executions import FINISHED, PREFIX, Enqueue
from core.contracts.facades import Documents

COLLECTION = "sb_executions"
MASK = "***"
MAX_LIST = 100


def new_id(now: float) -> str:
    """Opaque and time-ordered: milliseconds since the epoch, then 64 random bits."""
    return f"{int(now * 1000):012x}{secrets.token_hex(8)}"


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


class ExecutionStore:
    """Reads and moves records; every move is one conditional update."""

    def __init__(self, documents: Documents, clock: Any = time.time) -> None:
        self._documents = documents
        self.clock = clock

    @property
    def _records(self) -> Any:
        return self._documents.collection(COLLECTION)

    def ensure_indexes(self) -> None:
        self._records.create_index(["status", "lease_until"])
        self._records.create_index(["caller_key", "_id"])
        self._records.create_index(["expires_at"])

    def create(
        self, job: Enqueue, execution_id: str, sealed: str | None, keep: float
    ) -> dict[str, Any]:
        now = self.clock()
        record: dict[str, Any] = {
            "_id": execution_id,
            "action": job.action,
            "status": "queued",
            "params": {k: MASK if k in job.secret_params else v for k, v in job.params.items()},
            "sealed": sealed,  # the secret params, encrypted (see secrets.py)
            "progress": None,
            "attempts": 0,
            "result": None,
            "error": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "keep": keep,
            "expires_at": None,  # set when it ends: kept ``keep`` from then
            "caller": {
                "kind": job.caller.kind,
                "id": job.caller.id,
                "roles": sorted(job.caller.roles),
                "scopes": sorted(job.caller.scopes),
                "rate_limit": list(job.caller.rate_limit),
            },
            "caller_key": job.caller.key,
            "request_id": job.request_id,
            "timeout": job.timeout,
            "revocations": list(job.revocations),
            "cancel_requested": False,
            "lease_until": None,
        }
        self._records.insert_one(record)
        return record

    def get(self, execution_id: str) -> dict[str, Any] | None:
        if not isinstance(execution_id, str) or not execution_id:
            return None
        found: dict[str, Any] | None = self._records.find_one({"_id": execution_id})
        return found

    def claim(self, execution_id: str, lease: float) -> dict[str, Any] | None:
        """Move a queued record to ``running`` (one more attempt); None when it is not
        queued any more (cancelled, or another runner took it)."""
        now = self.clock()
        if not isinstance(execution_id, str) or not execution_id:
            return None
        moved = self._records.update_one(
            {"_id": execution_id, "status": "queued"},
            {
                "$set": {"status": "running", "started_at": now, "lease_until": now + lease},
                "$inc": {"attempts": 1},
            },
        )
        return self.get(execution_id) if moved else None

    # Every move of a running record names its attempt: a runner whose lease was taken
    # over (it lost the database for longer than the lease) can no longer touch it.

    def requeue(self, execution_id: str, attempt: int) -> bool:
        """A running attempt that its runner gave up (a stop): queued again."""
        return bool(
            self._records.update_one(
                {"_id": execution_id, "status": "running", "attempts": attempt},
                {"$set": {"status": "queued", "lease_until": None}},
            )
        )

    def requeue_stale(self, execution_id: str) -> bool:
        """A running record nobody renewed within its lease: queued again."""
        return bool(
            self._records.update_one(
                {"_id": execution_id, "status": "running", "lease_until": {"$lt": self.clock()}},
                {"$set": {"status": "queued", "lease_until": None}},
            )
        )

    def renew(self, execution_id: str, attempt: int, lease: float) -> bool:
        return bool(
            self._records.update_one(
                {"_id": execution_id, "status": "running", "attempts": attempt},
                {"$set": {"lease_until": self.clock() + lease}},
            )
        )

    def progress(self, execution_id: str, attempt: int, done: float, message: str | None) -> None:
        self._records.update_one(
            {"_id": execution_id, "status": "running", "attempts": attempt},
            {"$set": {"progress": {"done": done, "message": message}}},
        )

    def finish(
        self,
        execution_id: str,
        attempt: int,
        status: str,
        *,
        keep: float,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """End a running record: the changes made (None when it had ended already)."""
        now = self.clock()
        changes: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "expires_at": now + keep,
            "result": result,
            "error": None if error is None else dict(error),
            "lease_until": None,
            "sealed": None,  # its secrets are not needed any more
        }
        if progress is not None:
            changes["progress"] = dict(progress)
        moved = self._records.update_one(
            {"_id": execution_id, "status": "running", "attempts": attempt}, {"$set": changes}
        )
        return changes if moved else None

    def cancel(self, execution_id: str) -> str:
        """``cancelled`` (it was queued and never runs), ``cancelling`` (running: its job
        sees ``ctx.cancelled``), or the finished status it already had."""
        record = self.get(execution_id)
        if record is None:
            return "gone"
        now = self.clock()
        if record["status"] == "queued" and self._records.update_one(
            {"_id": execution_id, "status": "queued"},
            {
                "$set": {
                    "status": "cancelled",
                    "finished_at": now,
                    "expires_at": now + float(record.get("keep") or 0),
                    "sealed": None,
                }
            },
        ):
            return "cancelled"
        if self._records.update_one(
            {"_id": execution_id, "status": "running"}, {"$set": {"cancel_requested": True}}
        ):
            return "cancelling"
        record = self.get(execution_id)
        return "gone" if record is None else str(record["status"])

    def cancel_requested(self, execution_id: str) -> bool:
        record = self.get(execution_id)
        return record is None or bool(record.get("cancel_requested"))

    def pending(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Running records whose runner stopped renewing, then queued ones (oldest first)."""
        now = self.clock()
        stale = self._records.find(
            {"status": "running", "lease_until": {"$lt": now}}, sort=[("_id", 1)], limit=limit
        )
        queued = self._records.find({"status": "queued"}, sort=[("_id", 1)], limit=limit)
        return [*stale, *queued]

    def page(
        self,
        *,
        caller_key: str | None,
        action: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; ``cursor`` is the last id of the page before."""
        where: dict[str, Any] = {}
        if caller_key is not None:
            where["caller_key"] = caller_key
        if action is not None:
            where["action"] = action
        if status is not None:
            where["status"] = status
        if cursor is not None:
            where["_id"] = {"$lt": cursor}
        found = self._records.find(where, sort=[("_id", -1)], limit=limit + 1)
        more = len(found) > limit
        found = found[:limit]
        return found, (found[-1]["_id"] if more and found else None)

    def prune(self) -> int:
        """Finished records past their ``keep``."""
        return int(
            self._records.delete_many(
                {"expires_at": {"$lt": self.clock()}, "status": {"$in": sorted(FINISHED)}}
            )
        )


def caller_of(record: Mapping[str, Any]) -> Caller:
    """The caller a record's job runs as."""
    who = record["caller"]
    return Caller(
        who["kind"],
        id=who.get("id"),
        roles=frozenset(who.get("roles", ())),
        scopes=frozenset(who.get("scopes", ())),
        rate_limit=tuple(who.get("rate_limit", ())),
    )


def view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as its caller sees it: secret params masked, times as ISO 8601."""
    status = record["status"]
    shown: dict[str, Any] = {
        "id": record["_id"],
        "action": record["action"],
        "status": status,
        "url": f"{PREFIX}{record['_id']}",
        "params": record["params"],
        "progress": record.get("progress"),
        "attempts": record.get("attempts", 0),
        "created_at": _iso(record.get("created_at")),
        "started_at": _iso(record.get("started_at")),
        "finished_at": _iso(record.get("finished_at")),
        "caller": {"kind": record["caller"]["kind"], "id": record["caller"].get("id")},
    }
    if status == "succeeded":
        shown["result"] = record.get("result")
    if record.get("error") is not None:
        shown["error"] = record["error"]
    if status == "running" and record.get("cancel_requested"):
        shown["cancel_requested"] = True
    return shown


def check_limit(value: Any) -> int:
    if value is None:
        return 20
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIST:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIST}")
    return value
