"""The Socket.IO transport: python-socketio's ASGI server on the port that serves HTTP.

A client connects with ``auth={"token": …}`` or ``{"api_key": …}`` and then:

- ``call`` ``{"action", "params", "idempotency_key"?}`` → ack ``{"data", "meta"}`` or
  ``{"error": <problem>}``: the same chain as HTTP (identify, authorize, validate, limits,
  idempotency, audit), with ``transport="sio"``;
- ``join`` / ``leave`` ``{"room"}`` for the rooms modules declare (``module.yaml`` ``rooms:``);
- ``presence`` ``{"room"}`` → the room's members across every process.

Every socket's messages count against ``realtime.limits`` in this process (a socket lives
in one); a socket that keeps flooding is disconnected. Every ``realtime.recheck`` each
socket's credential is checked again: revoked or expired ends the socket with
``session_ended``. With a Redis store, python-socketio's Redis manager carries emits to
the sockets of every process.

Everything that touches the store, the database or a credential runs in the worker's call
threads: the event loop only moves messages. The realtime manager (manager.py) owns the
rooms, the pushes and the settings; this file only speaks Socket.IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import socketio

from core.base.client_ip import Network, client_ip, parse_networks
from core.base.errors import (
    ActionError,
    DependencyUnavailable,
    Forbidden,
    InternalError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from core.base.headers import Headers
from core.base.json_input import check_value
from core.base.metrics import Instruments
from core.base.request_ids import new_request_id
from core.contracts.calls import CallRequest
from core.contracts.context import ANONYMOUS, Caller
from core.contracts.limits import parse_limit
from core.manager import AsgiMount
from managers.rate_limiter.backends.gcra import (
    MICROS,
    Limit,
    Tat,
    admits,
    advance,
    current,
    retry_seconds,
)
from managers.realtime.presence import HEARTBEAT, Presence
from managers.realtime.rooms import Room

if TYPE_CHECKING:
    from core.config.config import Config
    from core.manager import Runtime

log = logging.getLogger("switchboard.realtime")
T = TypeVar("T")
Answer = dict[str, Any]  # a Socket.IO ack: {"data": …} (a call's with "meta") or {"error": problem}
_Handler = Callable[[str, "_Socket", Any, str], Awaitable[Answer]]
PATH = "/socket.io/"
VIOLATION_WINDOW = 60.0


@dataclass(frozen=True)
class SocketSettings:
    """The settings the transport reads (``realtime.*`` and the HTTP bounds it shares)."""

    anonymous: bool
    recheck: float
    limits: tuple[Limit, ...]
    max_violations: int
    max_body: int
    max_depth: int
    trusted: tuple[Network, ...]
    cors_origins: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config) -> SocketSettings:
        return cls(
            anonymous=bool(config["realtime.anonymous"]),
            recheck=float(config["realtime.recheck"]),
            limits=tuple(parse_limit(t) for t in config["realtime.limits"]),
            max_violations=int(config["realtime.max_violations"]),
            max_body=int(config["http.max_body_bytes"]),
            max_depth=int(config["http.max_json_depth"]),
            trusted=parse_networks(config["http.trusted_proxies"]),
            cors_origins=tuple(config["http.cors_origins"]),
        )


@dataclass
class _Socket:
    """What this process knows of one connected socket."""

    caller: Caller
    headers: Headers  # its credential, as the chain reads it on every call
    client_ip: str | None
    since: float
    tats: list[Tat | None]
    violations: deque[float] = field(default_factory=deque)
    rooms: set[str] = field(default_factory=set)

    # What an anonymous socket is called in presence: its own, and not its session id.
    alias: str = field(default_factory=lambda: f"anon-{secrets.token_urlsafe(9)}")

    @property
    def member(self) -> str:
        return f"{self.caller.kind}:{self.who}"

    @property
    def who(self) -> str:
        """The caller's id; an anonymous socket is its own member."""
        return str(self.caller.id) if self.caller.id is not None else self.alias


class SocketIOTransport:
    """One process's Socket.IO server: its sockets, their limits, the periodic rechecks.

    Its calls and credentials go through the booted app (``Runtime``) it is handed at
    startup; ``rooms`` is the realtime manager's, filled once the modules are loaded."""

    def __init__(
        self,
        settings: SocketSettings,
        *,
        rooms: Mapping[str, Room],
        presence: Presence,
        metrics: Instruments | None,
        redis_url: str | None,
        channel: str,
    ) -> None:
        self._settings = settings
        self._anonymous, self._recheck = settings.anonymous, settings.recheck
        self._limits, self._max_violations = settings.limits, settings.max_violations
        self._max_body, self._max_depth = settings.max_body, settings.max_depth
        self._trusted = settings.trusted
        self._rooms, self._roster = rooms, presence
        self._runtime: Runtime | None = None
        self._metrics = metrics
        self._sockets: dict[str, _Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dropping: set[asyncio.Future[Any]] = set()
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            client_manager=_RedisManager(redis_url, channel=channel) if redis_url else None,
            # A message must arrive whole to be answered 413 rather than dropped.
            max_http_buffer_size=settings.max_body + 64 * 1024,
            cors_allowed_origins=list(settings.cors_origins) or None,  # None: this origin only
            logger=False,
            engineio_logger=False,
        )
        self._register_events(self.sio)

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    def listening(self) -> bool:
        """Whether the Socket.IO Redis listener is subscribed. python-socketio retries a
        lost subscription with backoff (up to a minute) after Redis is back, and pushes of
        other processes are missed meanwhile: readiness says so until it has resubscribed.
        True before the listener first starts (with the first socket)."""
        manager = getattr(self.sio, "manager", None)
        if not isinstance(manager, socketio.AsyncRedisManager):
            return True
        pubsub = getattr(manager, "pubsub", None)
        return pubsub is None or _subscribed(pubsub)

    def mount(self) -> AsgiMount:
        app = socketio.ASGIApp(self.sio, socketio_path=PATH.strip("/"))
        return AsgiMount(PATH, app, self._started, self._stopping)

    def push(self, event: str, data: Any, target: str) -> bool:
        """Send ``event`` to a room (or ``user:<id>``) from any thread; False when this
        process's server is not running (the caller then sends through Redis)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        sent = asyncio.run_coroutine_threadsafe(self.sio.emit(event, data, room=target), loop)
        sent.add_done_callback(functools.partial(_report, event, target))
        return True

    async def _started(self, runtime: Runtime, pool: ThreadPoolExecutor) -> None:
        self._runtime = runtime
        self._loop, self._pool = asyncio.get_running_loop(), pool
        self._tasks = [
            asyncio.create_task(self._every(self._recheck, self._recheck_all)),
            asyncio.create_task(self._every(HEARTBEAT, self._heartbeat)),
        ]

    async def _stopping(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        await self.sio.shutdown()
        with contextlib.suppress(DependencyUnavailable):
            await self._in_pool(self._roster.forget_all)
        self._loop = None

    # --- events from clients ----------------------------------------------------------

    def _register_events(self, sio: socketio.AsyncServer) -> None:
        sio.on("connect", self._connect)
        sio.on("disconnect", self._disconnect)
        for event, handler in (
            ("call", self._call),
            ("join", self._join),
            ("leave", self._leave),
            ("presence", self._presence),
        ):
            sio.on(event, functools.partial(self._answer, event, handler))
        sio.on("*", self._unknown)

    async def _answer(self, event: str, handler: _Handler, sid: str, *args: Any) -> Answer:
        """One message of ``event``: its ack is the handler's data or ``{"error": problem}``,
        whatever the client sent (no payload, several, a bug of ours)."""
        request_id = new_request_id()
        if self._metrics is not None:
            self._metrics.realtime_message(event)
        try:
            state = self._admit(sid)
            if len(args) > 1:
                raise MalformedRequest(f"{event} takes one payload, not {len(args)}")
            return await handler(sid, state, args[0] if args else None, request_id)
        except ActionError as error:
            return {"error": error.problem(request_id)}
        except Exception:
            log.exception("Socket.IO %s failed unexpectedly (request %s)", event, request_id)
            internal = InternalError(f"an unexpected error occurred; quote request id {request_id}")
            return {"error": internal.problem(request_id)}

    async def _unknown(self, event: str, sid: str, *args: Any) -> Answer:
        async def refuse(*_: Any) -> Answer:
            raise NotFound(f"no event {event!r}: send call, join, leave or presence")

        return await self._answer(event, refuse, sid)  # counted against the limits too

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        request_id = new_request_id()
        try:
            headers = _credential(auth)
            address = client_ip(
                environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"), self._trusted
            )
            if not headers and not self._anonymous:
                raise Unauthorized(
                    'connect with auth={"token": …} or {"api_key": …}', reason="missing"
                )
            caller = ANONYMOUS
            if headers:
                request = CallRequest("", None, request_id, address, "sio", headers)
                caller = await self._in_pool(self._booted().caller_of, request)
        except ActionError as error:
            if isinstance(error, Unauthorized) and self._metrics is not None:
                self._metrics.auth_failed(error.reason)
            raise socketio.exceptions.ConnectionRefusedError(
                error.detail or error.title, error.problem(request_id)
            ) from None
        self._sockets[sid] = _Socket(
            caller, headers, address, time.time(), [None] * len(self._limits)
        )
        if self._metrics is not None:
            self._metrics.socket_opened()
        if caller.kind == "user":
            await self.sio.enter_room(sid, f"user:{caller.id}")
        log.info("socket %s connected as %s %s", sid, caller.kind, caller.id)

    async def _disconnect(self, sid: str, *args: Any) -> None:
        state = self._sockets.pop(sid, None)
        if state is None:
            return
        if self._metrics is not None:
            self._metrics.socket_closed()
        for room in list(state.rooms):
            await self._left(sid, state, room)

    async def _call(self, sid: str, state: _Socket, payload: Any, request_id: str) -> Answer:
        if not isinstance(payload, dict):
            raise MalformedRequest(
                "call takes an object: {action, params, idempotency_key, respond_async}"
            )
        if len(json.dumps(payload, default=str)) > self._max_body:
            raise PayloadTooLarge(f"the call exceeds {self._max_body} bytes")
        action, params = payload.get("action"), payload.get("params", {})
        key = payload.get("idempotency_key")
        if not isinstance(action, str) or not action:
            raise MalformedRequest("call needs an action name")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise MalformedRequest("params must be an object")
        if key is not None and not isinstance(key, str):
            raise MalformedRequest("idempotency_key must be a string")
        check_value(params, self._max_depth)
        respond_async = payload.get("respond_async", False)
        if not isinstance(respond_async, bool):
            raise MalformedRequest("respond_async must be true or false")
        request = CallRequest(
            action,
            params,
            request_id,
            state.client_ip,
            "sio",
            state.headers,
            None,
            key,
            respond_async=respond_async,
        )
        result = await self._in_pool(self._booted().invoke, request)
        body: dict[str, Any] = json.loads(result.body)
        if result.status >= 400:  # a failure, or a replayed one
            return {"error": body}
        if result.replayed:
            body["meta"]["replayed"] = True
        return body  # the envelope as HTTP sends it: data and meta

    async def _join(self, sid: str, state: _Socket, payload: Any, request_id: str) -> Answer:
        room = await self._room_for(state, payload)
        if room.name not in state.rooms:
            await self.sio.enter_room(sid, room.name)
            state.rooms.add(room.name)
            member, caller = state.member, state.caller
            first = await self._in_pool(
                self._roster.join, room.name, member, caller.kind, state.who, sid
            )
            if first:
                who = {"id": state.who, "kind": caller.kind}
                await self.sio.emit("presence", {"room": room.name, "joined": who}, room=room.name)
        return {"data": {"room": room.name}}

    async def _leave(self, sid: str, state: _Socket, payload: Any, request_id: str) -> Answer:
        name = _room_name(payload)
        if name not in self._rooms:
            raise NotFound(f"no room {name!r}")
        if name in state.rooms:
            await self._left(sid, state, name)
        return {"data": {"room": name}}

    async def _presence(self, sid: str, state: _Socket, payload: Any, request_id: str) -> Answer:
        room = await self._room_for(state, payload)
        members = await self._in_pool(self._roster.members, room.name)
        return {"data": {"room": room.name, "members": members}}

    async def _left(self, sid: str, state: _Socket, room: str) -> None:
        state.rooms.discard(room)
        with contextlib.suppress(KeyError, ValueError):
            await self.sio.leave_room(sid, room)
        try:
            last = await self._in_pool(self._roster.leave, room, state.member, sid)
        except DependencyUnavailable:
            log.warning("presence of %s in %s not updated: the store is unavailable", sid, room)
            return
        if last:
            who = {"id": state.who, "kind": state.caller.kind}
            await self.sio.emit("presence", {"room": room, "left": who}, room=room)

    async def _room_for(self, state: _Socket, payload: Any) -> Room:
        """The room ``payload`` names, if ``state``'s caller may be in it (else 404/403)."""
        name = _room_name(payload)
        room = self._rooms.get(name)
        if room is None:
            raise NotFound(f"no room {name!r}")
        if not await self._in_pool(room.may_join, state.caller):
            raise Forbidden(f"you may not join {name}")
        return room

    # --- limits -----------------------------------------------------------------------

    def _admit(self, sid: str) -> _Socket:
        """The socket, once its message fits ``realtime.limits`` (429 otherwise; a socket
        past ``realtime.max_violations`` 429s in a minute is then disconnected)."""
        state = self._sockets.get(sid)
        if state is None:
            raise Unauthorized("this socket is not connected")
        now = int(time.time() * MICROS)
        tats = [current(tat, now) for tat in state.tats]
        if all(admits(tat, now, limit, 1) for tat, limit in zip(tats, self._limits, strict=True)):
            state.tats = [
                advance(tat, limit, 1) for tat, limit in zip(tats, self._limits, strict=True)
            ]
            return state
        wait = max(
            retry_seconds(tat, now, limit, 1)
            for tat, limit in zip(tats, self._limits, strict=True)
            if not admits(tat, now, limit, 1)
        )
        clock = time.monotonic()
        state.violations.append(clock)
        while state.violations and clock - state.violations[0] > VIOLATION_WINDOW:
            state.violations.popleft()
        if len(state.violations) >= self._max_violations:
            log.warning("socket %s disconnected: it kept exceeding realtime.limits", sid)
            asyncio.get_running_loop().call_later(0.05, self._drop, sid)
        retry = max(1, round(wait + 0.5))
        raise RateLimited(
            f"this socket sends faster than realtime.limits; retry in {retry}s",
            headers={"Retry-After": str(retry)},
            extra={"retry_after": retry},
        )

    def _drop(self, sid: str) -> None:
        task = asyncio.ensure_future(self.sio.disconnect(sid))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    # --- the periodic work ------------------------------------------------------------

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:  # the next round tries again
                log.exception("realtime background work failed")

    async def _recheck_all(self) -> None:
        """Check every socket's credential again; end the sockets whose is no longer good."""
        for sid, state in list(self._sockets.items()):
            if not state.headers or sid not in self._sockets:
                continue
            request = CallRequest("", None, new_request_id(), state.client_ip, "sio", state.headers)
            try:
                await self._in_pool(
                    functools.partial(self._booted().caller_of, count_failure=False), request
                )
            except DependencyUnavailable:
                continue  # the store is down: not a reason to end anyone's session
            except ActionError as error:
                await self.sio.emit("session_ended", error.problem(request.request_id), to=sid)
                await self.sio.disconnect(sid)

    async def _heartbeat(self) -> None:
        await self._in_pool(self._roster.heartbeat)

    def _booted(self) -> Runtime:
        if self._runtime is None:
            raise DependencyUnavailable("the realtime server is not running")
        return self._runtime

    async def _in_pool(self, work: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise DependencyUnavailable("the realtime server is not running")
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)


def _report(event: str, target: str, sent: Future[Any]) -> None:
    error = None if sent.cancelled() else sent.exception()
    if error is not None:
        log.warning("%s to %s was not delivered: %r", event, target, error)


def _credential(auth: Any) -> Headers:
    """The headers identify reads, from a connect's ``auth``."""
    if auth is None:
        return Headers()
    if not isinstance(auth, dict):
        raise MalformedRequest('auth must be an object: {"token": …} or {"api_key": …}')
    token, key = auth.get("token"), auth.get("api_key")
    if token is not None and key is not None:
        raise Unauthorized("send either a token or an api_key, not both", reason="malformed")
    if token is not None:
        if not isinstance(token, str):
            raise Unauthorized("the token must be a string", reason="malformed")
        return Headers.of({"Authorization": f"Bearer {token}"})
    if key is not None:
        if not isinstance(key, str):
            raise Unauthorized("the api_key must be a string", reason="malformed")
        return Headers.of({"X-API-Key": key})
    return Headers()


def _room_name(payload: Any) -> str:
    name = payload.get("room") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name:
        raise MalformedRequest('name the room: {"room": "<module>.<room>"}')
    return name


def _subscribed(pubsub: Any) -> bool:
    """Whether a redis-py PubSub is connected and holds its subscription."""
    connection = pubsub.connection
    return connection is not None and bool(connection.is_connected) and bool(pubsub.channels)


class _RedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, except that reconnecting the publisher (after a
    failed publish) keeps the listener's live subscription: the library would replace it
    with a new, unsubscribed PubSub, and readiness reads the one it holds."""

    def _redis_connect(self) -> None:
        pubsub = getattr(self, "pubsub", None)
        keep = pubsub if pubsub is not None and _subscribed(pubsub) else None
        super()._redis_connect()
        if keep is not None:
            self.pubsub = keep
