"""Executions: what a background action's call turns into, and what its job sees.

A ``run: background`` action (or ``run: either`` called with ``Prefer: respond-async``) is
identified, authorized, validated, limited and claimed in the call like any other; the run
step then hands an ``Enqueue`` to the app's ``Executions`` (the executions manager), which
writes the record and answers 202 with it. A worker runs the job later through the same
chain, with ``CallRequest.job`` set: the handler's ``ctx`` then reports progress and sees
cancellation through that ``JobControl``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.contracts.context import Caller

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
PREFIX = "/api/v1/executions/"  # an execution's URL is PREFIX + its id


@dataclass(frozen=True)
class Enqueue:
    """One call of a background action, checked and ready to be recorded."""

    action: str
    params: Mapping[str, Any]  # validated, defaults applied
    secret_params: frozenset[str]  # kept encrypted in the record, masked in every view
    caller: Caller
    request_id: str
    client_ip: str | None
    timeout: float | None  # the job's time limit
    keep: float | None  # how long the record is kept (None: executions.keep)
    # Store keys that must still be absent when the job starts (the caller's account or
    # key revoked since: the job fails ``unauthenticated``).
    revocations: tuple[str, ...] = ()


class Executions(Protocol):
    """The app's executions (the executions manager)."""

    def enqueue(self, job: Enqueue) -> Mapping[str, Any]:
        """Write the record (status ``queued``) and hand it to a runner; the record as a
        caller sees it."""
        ...

    def run_now(
        self,
        runtime: Any,
        execution_id: str,
        watch: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Run one queued job now, in this thread (``call --wait``); its finished record,
        or None when it was not queued any more. ``watch`` gets each stored progress."""
        ...

    def run_queued(self, runtime: Any) -> list[dict[str, Any]]:
        """Run every queued job now, in this thread, oldest first (the test harness, the
        CLI); the finished records as their callers see them. ``runtime``: the booted app
        (``core.manager.Runtime``) the jobs go through."""
        ...
