"""audit.search: the records the audit manager stores, newest first."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from core.calls import WithMeta
from core.errors import FieldError, ValidationError

COLLECTION = "sb_audit"  # kept by the audit manager
CURSOR = re.compile(r"[0-9]{20}-[0-9a-f]{8}")
SHOWN = (
    "time",
    "request_id",
    "action",
    "caller_kind",
    "caller_id",
    "client_ip",
    "transport",
    "outcome",
    "status",
    "problem",
    "duration_ms",
    "param_names",
    "replayed",
)


def search(
    ctx: Any,
    *,
    caller: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> WithMeta:
    where: dict[str, Any] = {}
    if caller is not None:
        where["caller_id"] = caller
    if action is not None:
        where["action"] = action
    if outcome is not None:
        where["outcome"] = outcome
    at: dict[str, float] = {}
    if since is not None:
        at["$gte"] = _moment("since", since)
    if until is not None:
        at["$lt"] = _moment("until", until)
    if at:
        where["at"] = at
    if cursor is not None:
        if not CURSOR.fullmatch(cursor):
            raise ValidationError(
                "cursor is not one this action gave",
                errors=(FieldError("/cursor", "use meta.next_cursor of the previous page"),),
            )
        where["_id"] = {"$lt": cursor}
    found = ctx.db.collection(COLLECTION).find(where, sort=[("_id", -1)], limit=limit + 1)
    page = found[:limit]
    records = [{key: doc.get(key) for key in SHOWN} for doc in page]
    more = len(found) > limit
    return WithMeta(records, {"next_cursor": page[-1]["_id"] if more else None})


def _moment(field: str, text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{field} is not an ISO 8601 time",
            errors=(FieldError(f"/{field}", "expected e.g. 2026-12-01T00:00:00Z"),),
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
