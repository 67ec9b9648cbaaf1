"""Rooms as modules declare them in ``module.yaml``, and who may join one.

```yaml
rooms:
  lobby: {join: user}                       # public | user | api_key | any
  mods: {join: {roles: [moderator]}}        # or {scopes: [...]}, or {handler: handlers:may_join}
  orders: {join: user, forward: [state.changed, order.shipped]}
```

A room's full name is ``<module>.<room>``. ``forward`` bridges events to the room: the
``state.changed`` events of the module's own state machines, and the module's own declared
events; nothing of another module's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.base.errors import Problem
from core.contracts.context import Caller
from core.contracts.module import ImportFailed, LoadedModule, RefError, resolve_ref

ROOM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
KINDS: Mapping[str, frozenset[str]] = {
    "public": frozenset({"anonymous", "user", "api_key"}),
    "user": frozenset({"user"}),
    "api_key": frozenset({"api_key"}),
    "any": frozenset({"user", "api_key"}),
}
STATE_CHANGED = "state.changed"

JoinCheck = Callable[[Caller, str], bool]  # (caller, room) -> may join


@dataclass(frozen=True)
class Room:
    """One declared room; ``may_join`` runs in a worker thread (a handler may use ctx)."""

    name: str  # <module>.<room>
    module: str
    kinds: frozenset[str] = frozenset()  # caller kinds a plain policy admits
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    handler: JoinCheck | None = None
    forward: tuple[str, ...] = ()  # full event names bridged to the room

    def may_join(self, caller: Caller) -> bool:
        if self.handler is not None:
            return bool(self.handler(caller, self.name))
        if self.roles:
            return caller.kind == "user" and bool(self.roles & caller.roles)
        if self.scopes:
            return caller.kind == "api_key" and self.scopes <= caller.scopes
        return caller.kind in self.kinds


def parse_rooms(
    loaded: LoadedModule,
    declared_events: Sequence[str],
    handler_check: Callable[[str, Callable[..., Any]], JoinCheck],
) -> tuple[list[Room], list[Problem]]:
    """The rooms of one module, or the problems of its ``rooms:`` (each naming its field)."""
    manifest = loaded.manifest
    rooms: list[Room] = []
    problems: list[Problem] = []

    def problem(message: str, where: str) -> None:
        problems.append(
            Problem(message, file=manifest.file, module=manifest.name, field=f"rooms.{where}")
        )

    for key, spec in manifest.rooms.items():
        if not isinstance(key, str) or not ROOM_NAME.match(key):
            problem(f"room name {key!r} must match {ROOM_NAME.pattern}", str(key))
            continue
        if not isinstance(spec, Mapping) or "join" not in spec:
            problem("a room is a mapping with a join: policy", key)
            continue
        unknown = sorted(set(spec) - {"join", "forward", "description"})
        if unknown:
            problem(f"unknown keys {unknown}; a room takes join, forward, description", key)
            continue
        room = Room(name=f"{manifest.name}.{key}", module=manifest.name)
        join = spec["join"]
        if isinstance(join, str):
            if join not in KINDS:
                problem(f"join: {join!r} is not one of {', '.join(KINDS)}", f"{key}.join")
                continue
            room = _with(room, kinds=KINDS[join])
        elif isinstance(join, Mapping) and len(join) == 1:
            ((what, value),) = join.items()
            if what in ("roles", "scopes"):
                if not _strings(value):
                    problem(f"join: {{{what}: …}} takes a list of names", f"{key}.join")
                    continue
                room = _with(room, **{what: frozenset(value)})
            elif what == "handler" and isinstance(value, str):
                try:
                    room = _with(
                        room, handler=handler_check(value, resolve_ref(manifest.name, value))
                    )
                except ImportFailed as exc:  # named once, at the file that does not import
                    problems.append(exc.problem)
                    continue
                except RefError as exc:
                    problem(str(exc), f"{key}.join.handler")
                    continue
            else:
                problem("join: takes {roles: […]}, {scopes: […]} or {handler: …}", f"{key}.join")
                continue
        else:
            problem("join: is public, user, api_key, any or a one-key mapping", f"{key}.join")
            continue
        forward, bad = _forwarded(manifest.name, spec.get("forward", ()), declared_events)
        if bad:
            problem(bad, f"{key}.forward")
            continue
        rooms.append(_with(room, forward=forward))
    return rooms, problems


def _forwarded(
    module: str, entries: Any, declared_events: Sequence[str]
) -> tuple[tuple[str, ...], str | None]:
    """Full event names for ``forward:``, or why one cannot be forwarded."""
    if not _strings(entries):
        return (), "forward: takes a list of event names"
    found = []
    for entry in entries:
        full = entry if entry.startswith(f"{module}.") else f"{module}.{entry}"
        if entry == STATE_CHANGED:
            found.append(STATE_CHANGED)
        elif full in declared_events:
            found.append(full)
        else:
            return (), (
                f"{entry!r} is neither state.changed nor an event this module declares "
                "(events: in module.yaml); another module's events are never forwarded"
            )
    return tuple(found), None


def _strings(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)


def _with(room: Room, **changes: Any) -> Room:
    return replace(room, **changes)
