"""Who is in a room, across every process, through the shared store.

Each process keeps its own members of each room and writes them under its own key,
``presence:<room>:<process>`` (JSON ``{member: {"id", "kind", "since", "sockets"}}``), with a
TTL it renews every ``HEARTBEAT`` seconds: a process that dies without a goodbye drops out
within ``TTL``. No two processes write one key, so there is nothing to lock. A room's
members are the union of its process keys: one entry per caller, however many sockets.

Calls here make store round trips: they run in worker threads, never in the event loop.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.base.store import KeyValueStore

TTL = 30.0
HEARTBEAT = 10.0
PREFIX = "presence:"


@dataclass
class _Member:
    id: str
    kind: str
    since: float
    sockets: set[str] = field(default_factory=set)


class Presence:
    """This process's members of every room, mirrored into the store."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rooms: dict[str, dict[str, _Member]] = {}
        self._lock = threading.Lock()

    def join(self, room: str, member: str, kind: str, who: str, sid: str) -> bool:
        """Add socket ``sid`` of caller ``member``; True when it is the caller's first
        socket in the room across every process (the room hears ``joined``)."""
        with self._lock:
            members = self._rooms.setdefault(room, {})
            entry = members.setdefault(member, _Member(who, kind, time.time()))
            entry.sockets.add(sid)
            mine = len(entry.sockets)
        self._write(room)
        if mine > 1:
            return False
        return self._count(room, member) == 1

    def leave(self, room: str, member: str, sid: str) -> bool:
        """Remove socket ``sid``; True when the caller has no socket left in the room
        anywhere (the room hears ``left``)."""
        with self._lock:
            members = self._rooms.get(room, {})
            entry = members.get(member)
            if entry is None or sid not in entry.sockets:
                return False
            entry.sockets.discard(sid)
            if entry.sockets:
                return False
            del members[member]
            if not members:
                self._rooms.pop(room, None)
        self._write(room)
        return self._count(room, member) == 0

    def members(self, room: str) -> list[dict[str, Any]]:
        """Everyone in ``room`` on every live process: ``{"id", "kind", "since", "sockets"}``."""
        union: dict[str, dict[str, Any]] = {}
        for entries in self._entries(room):
            for key, entry in entries.items():
                found = union.get(key)
                if found is None:
                    union[key] = dict(entry)
                else:
                    found["sockets"] += entry["sockets"]
                    found["since"] = min(found["since"], entry["since"])
        return sorted(union.values(), key=lambda e: (e["since"], e["id"]))

    def heartbeat(self) -> None:
        """Renew this process's keys (every ``HEARTBEAT`` seconds)."""
        with self._lock:
            rooms = list(self._rooms)
        for room in rooms:
            self._write(room)

    def forget_all(self) -> None:
        """Remove this process's keys (at shutdown)."""
        with self._lock:
            rooms = list(self._rooms)
            self._rooms.clear()
        if rooms:
            self._store.delete(*(self._key(room) for room in rooms))

    # --- store ------------------------------------------------------------------------

    def _key(self, room: str) -> str:
        return f"{PREFIX}{room}:{self.process}"

    def _write(self, room: str) -> None:
        with self._lock:
            members = self._rooms.get(room)
            snapshot = {
                key: {"id": m.id, "kind": m.kind, "since": m.since, "sockets": len(m.sockets)}
                for key, m in (members or {}).items()
            }
        if snapshot:
            self._store.set(self._key(room), json.dumps(snapshot), ttl=TTL)
        else:
            self._store.delete(self._key(room))

    def _entries(self, room: str) -> Iterable[dict[str, dict[str, Any]]]:
        for key in self._store.scan(f"{PREFIX}{room}:"):
            raw = self._store.get(key)
            if raw is not None:
                yield json.loads(raw)

    def _count(self, room: str, member: str) -> int:
        return sum(
            entries[member]["sockets"] for entries in self._entries(room) if member in entries
        )
