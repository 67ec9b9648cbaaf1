"""WebSocketManager (``realtime``, ``ctx.realtime``): rooms, pushes and the Socket.IO
transport's settings.

Handlers push with ``ctx.realtime.emit(event, data, room=… | user=…)``, delivered once the
call's transaction commits: through this process's Socket.IO server (transport.py) when it
runs one, else through Redis to the processes that do. Rooms are what modules declare in
``module.yaml`` (rooms.py); presence is the union of every process's members
(presence.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import socketio

from core.base.errors import Problem
from core.base.hooks import HookBus, HookEvent
from core.base.metrics import Instruments
from core.base.request_ids import new_request_id
from core.base.store import KeyValueStore
from core.config.settings import Setting, boolean, duration, integer, strings, text
from core.contracts.context import Caller, Context
from core.contracts.facades import Documents, Pushes, Realtime
from core.contracts.module import ModuleCatalog
from core.manager import AsgiMount, Health, Manager
from managers.realtime.presence import Presence
from managers.realtime.rooms import STATE_CHANGED, Room, parse_rooms
from managers.realtime.transport import SocketIOTransport, SocketSettings

if TYPE_CHECKING:
    from core.manager import App

log = logging.getLogger("switchboard.realtime")
_OWNER = "manager realtime"
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")
RESERVED = frozenset(
    {"connect", "disconnect", "call", "join", "leave", "presence", "error", "session_ended"}
)


class ModuleRealtime:
    """``ctx.realtime`` of one module."""

    def __init__(self, manager: WebSocketManager) -> None:
        self._manager = manager

    @property
    def url(self) -> str | None:
        return self._manager.url

    def emit(
        self, event: str, data: Any = None, *, room: str | None = None, user: str | None = None
    ) -> None:
        self._manager.emit(event, data, room=room, user=user)


class WebSocketManager(Manager):
    name = "realtime"
    requires = ("config", "redis", "db", "hooks")
    provides: ClassVar[tuple[type, ...]] = (Realtime, Pushes)
    facade = "realtime"
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "realtime.enabled",
            boolean,
            True,
            "Serve Socket.IO beside HTTP (false: no endpoint; pushes still reach other "
            "processes through Redis)",
            owner=_OWNER,
        ),
        Setting(
            "realtime.anonymous",
            boolean,
            False,
            "Accept Socket.IO connections without a credential (they join public rooms only)",
            owner=_OWNER,
        ),
        Setting(
            "realtime.recheck",
            duration,
            60.0,
            "How often each socket's credential is checked again (revoked or expired: ended)",
            owner=_OWNER,
        ),
        Setting(
            "realtime.limits",
            strings,
            ("20/second", "600/minute"),
            "Messages one socket may send (every call, join, leave, presence); 429 acks above",
            owner=_OWNER,
        ),
        Setting(
            "realtime.max_violations",
            integer,
            10,
            "429 acks within a minute after which a socket is disconnected",
            minimum=1,
            owner=_OWNER,
        ),
        Setting(
            "realtime.url",
            text,
            None,
            "The origin clients connect to (system.info's realtime_url); "
            "default http://<http.host>:<http.port>",
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        self.transport: SocketIOTransport | None = None  # None: realtime.enabled is false
        self.url: str | None = None
        self.rooms: dict[str, Room] = {}
        self._external: socketio.RedisManager | None = None  # emits with no loop here
        self._app: App | None = None
        self._metrics: Instruments | None = None
        self._watchers: tuple[Callable[[str, Any, str], None], ...] = ()

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        config = app.config
        self._app = app
        self._store = self.require(KeyValueStore)
        self._db = self.require(Documents)
        self._hooks = self.require(HookBus)
        self._metrics = app.capability(Instruments)
        enabled = bool(config["realtime.enabled"])
        self.url = config["realtime.url"] or (
            _origin(str(config["http.host"]), int(config["http.port"])) if enabled else None
        )
        redis_url = str(config["redis.url"])
        channel = f"{config['redis.prefix']}socketio"
        shared = urlsplit(redis_url).scheme in ("redis", "rediss")
        self.presence = Presence(self._store)
        if shared:
            self._external = socketio.RedisManager(redis_url, channel=channel, write_only=True)
        if not enabled:
            return
        self.transport = SocketIOTransport(
            SocketSettings.from_config(config),
            rooms=self.rooms,
            presence=self.presence,
            metrics=self._metrics,
            redis_url=redis_url if shared else None,
            channel=channel,
        )

    def stop(self) -> None:
        self.transport = None
        self._external = None

    def health(self) -> Health:
        transport = self.transport
        sockets = 0 if transport is None else transport.sockets
        details: dict[str, Any] = {"sockets": sockets, "rooms": len(self.rooms)}
        if transport is not None and not transport.listening():
            return Health(
                "degraded",
                {**details, "error": "not subscribed to Redis: pushes of other workers wait"},
            )
        return Health("ok", details)

    def facade_for(self, module: str) -> ModuleRealtime:
        return ModuleRealtime(self)

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        problems: list[Problem] = []
        declared = [e for loaded in modules for e in _events_of(loaded)]
        for loaded in modules:
            rooms, found = parse_rooms(loaded, declared, self._join_handler(loaded.name))
            problems.extend(found)
            for room in rooms:
                self.rooms[room.name] = room
        if not problems:
            for room in self.rooms.values():
                for event in room.forward:
                    self._hooks.register(
                        event, self._forwarder(room, event), owner=f"realtime {room.name}"
                    )
        return problems

    def asgi_mounts(self) -> Sequence[AsgiMount]:
        return () if self.transport is None else (self.transport.mount(),)

    # --- pushing ----------------------------------------------------------------------

    def emit(
        self, event: str, data: Any = None, *, room: str | None = None, user: str | None = None
    ) -> None:
        """``ctx.realtime.emit``: checked now, delivered once the transaction commits."""
        if not isinstance(event, str) or not EVENT_NAME.match(event) or event in RESERVED:
            raise ValueError(
                f"event {event!r} must match {EVENT_NAME.pattern} and not be one of "
                f"{', '.join(sorted(RESERVED))}"
            )
        if (room is None) == (user is None):
            raise ValueError("emit to exactly one of room= or user=")
        if user is not None and (not isinstance(user, str) or not user):
            raise ValueError("user= takes a user id")
        if room is not None and room not in self.rooms:
            raise ValueError(f"no room {room!r}; declared: {', '.join(sorted(self.rooms))}")
        json.dumps(data)  # refuse what cannot be sent, in the handler that sent it
        target = room if room is not None else f"user:{user}"
        self._db.after_commit(lambda: self._deliver(event, data, target))

    def watch(self, callback: Callable[[str, Any, str], None]) -> None:
        """Tests: call ``callback(event, data, target)`` for every push as it is delivered
        (after its transaction committed); ``target`` is a room or ``user:<id>``."""
        self._watchers = (*self._watchers, callback)

    def _deliver(self, event: str, data: Any, target: str) -> None:
        for watcher in self._watchers:
            watcher(event, data, target)
        transport = self.transport
        if transport is not None and transport.push(event, data, target):
            return
        if self._external is not None:  # no Socket.IO server here (CLI, WSGI): via Redis
            self._external.emit(event, data, room=target)
        else:
            log.debug("no Socket.IO server in this process: %s to %s not delivered", event, target)

    def _forwarder(self, room: Room, event: str) -> Callable[[HookEvent], None]:
        def forward(hook: HookEvent) -> None:
            data = dict(hook.data)
            if event == STATE_CHANGED and not str(data.get("kind", "")).startswith(
                f"{room.module}."
            ):
                return  # another module's machine: never forwarded
            self._deliver(event, data, room.name)

        return forward

    # --- plumbing ---------------------------------------------------------------------

    def _join_handler(self, module: str) -> Callable[[str, Callable[..., Any]], Any]:
        """A ``{handler: …}`` join policy as ``(caller, room) -> bool``: the function gets a
        ctx of its module with the joining caller."""

        def bind(ref: str, function: Callable[..., Any]) -> Callable[[Caller, str], bool]:
            def may_join(caller: Caller, room: str) -> bool:
                app = self._app
                if app is None:
                    raise self.not_started()
                ctx = Context(app.scope(module), f"join {room}", caller, new_request_id())
                return bool(function(ctx, room))

            return may_join

        return bind


def _origin(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _events_of(loaded: Any) -> list[str]:
    return [f"{loaded.name}.{event}" for event in loaded.manifest.events]
