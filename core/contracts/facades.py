"""What handlers see of the managers: the typed facades behind ``ctx.<name>``.

Each is a Protocol, so the kernel types ``ctx`` without importing a manager; the manager
that declares the facade name (``Manager.facade``) hands out an object that implements it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from core.contracts.documents import Collection

T = TypeVar("T")


class Documents(Protocol):
    """``ctx.db``: collections and transactions (see README "Data: ctx.db")."""

    def collection(self, name: str) -> Collection: ...

    def rename_collection(self, old: str, new: str) -> bool: ...

    def in_transaction(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def after_commit(self, callback: Callable[[], None]) -> None: ...

    def run_transaction(self, work: Callable[[], T], *, retries: int = 5) -> T: ...


class StateMachines(Protocol):
    """``ctx.state``: instances of the state machines modules declare."""

    def create(
        self, kind: str, id: str, data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def get(self, kind: str, id: str) -> dict[str, Any] | None: ...

    def transition(
        self,
        kind: str,
        id: str,
        to: str,
        *,
        data: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]: ...

    def history(self, kind: str, id: str) -> list[dict[str, Any]]: ...

    def delete(self, kind: str, id: str) -> bool: ...


class Hooks(Protocol):
    """``ctx.hooks``: emit the module's own declared events."""

    def emit(self, event: str, data: Mapping[str, Any] | None = None, **fields: Any) -> None: ...

    def has_listeners(self, event: str) -> bool: ...


class Secrets(Protocol):
    """``ctx.secrets``: secrets under the globs the module's manifest declares."""

    def get(self, name: str, field: str | None = None) -> Any: ...

    def allows(self, name: str) -> bool: ...


class Realtime(Protocol):
    """``ctx.realtime``: push an event to the Socket.IO sockets in a room or of a user,
    delivered once the call's database transaction commits (at once outside one)."""

    url: str | None  # the origin a Socket.IO client connects to

    def emit(
        self, event: str, data: Any = None, *, room: str | None = None, user: str | None = None
    ) -> None: ...


class Pushes(Protocol):
    """Tests: every realtime push as it is delivered, after its transaction committed."""

    def watch(self, callback: Callable[[str, Any, str], None]) -> None:
        """Call ``callback(event, data, target)``; ``target`` is a room or ``user:<id>``."""
        ...
