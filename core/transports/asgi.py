"""Switchboard as an ASGI application: what ``serve`` runs, one per worker process.

- **Lifespan**: each worker boots its own app at startup and stops it at shutdown (the
  server drains in-flight requests first), so managers flush and close per worker.
- **Bodies are read in the event loop**, whole, before a thread is given the request: at
  most ``http.max_body_bytes`` (413 above) and within ``http.read_timeout`` (408 after),
  so a client that trickles its body holds a coroutine, never a thread.
- **Calls** (``POST /api/v1/actions/<name>``) go straight to the action endpoint in the
  worker's thread pool (``http.threads``); every other route is the Flask app, run as WSGI
  in the same pool with the body already in hand. Health probes run in two threads of their
  own, so a worker whose call threads are all busy still answers them at once.
- **Mounts**: what managers serve beside HTTP (``Manager.asgi_mounts``: Socket.IO under
  ``/socket.io/``) gets the requests and WebSocket connections under its prefix.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlencode

from flask import Flask

from core.base.errors import ActionError, PayloadTooLarge, RequestTimeout
from core.base.headers import Headers
from core.base.request_ids import request_id_of
from core.contracts.executions import PREFIX as EXECUTIONS
from core.runtime.booted import BootedApp
from core.runtime.manager import AsgiMount
from core.transports.http import CHECKED, WAIT_POLL, finished, wait_seconds
from core.transports.http_actions import PREFIX, ActionEndpoint, Answer, RequestBounds

log = logging.getLogger("switchboard.server")

PROBES = frozenset({"/health/live", "/health/ready"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Disconnected(Exception):
    """The client went away before its request was complete."""


class _Deadlines:
    """Body reads that must end by a deadline. One sweeper task per worker cancels the late
    ones (to the second), instead of a timer armed and disarmed for every request."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.timeout
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())

    def release(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching ``task``; True when it was cancelled for being late."""
        self._reading.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._reading:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = loop.time()
            for task, deadline in list(self._reading.items()):
                if deadline <= now:
                    del self._reading[task]
                    self._expired.add(task)
                    task.cancel()


class WsgiBridge:
    """A WSGI app served over ASGI: the body is read here, in the event loop, within
    ``read_timeout`` and ``max_body`` bytes; then the app runs in ``pool``."""

    def __init__(
        self, wsgi: Flask, pool: ThreadPoolExecutor, *, read_timeout: float, max_body: int
    ) -> None:
        self.wsgi = wsgi
        self.pool = pool
        self.read_timeout = read_timeout
        self.max_body = max_body
        self._deadlines = _Deadlines(read_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = Headers.from_asgi(scope["headers"])
        try:
            body = await self.body(receive, headers)
        except ActionError as error:
            await send_answer(send, ActionEndpoint.problem(error, None))
            return
        except _Disconnected:
            return
        await send_answer(send, await self.run(scope, headers, body))

    async def run(
        self,
        scope: Scope,
        headers: Headers,
        body: bytes,
        pool: ThreadPoolExecutor | None = None,
        *,
        request_id: str | None = None,
    ) -> Answer:
        """Run the WSGI app on the request. ``request_id``: the ASGI app made the request's
        id and checked its bounds already, and the Flask app takes both as they are."""
        environ = _environ(scope, headers, body)
        if request_id is not None:
            environ[CHECKED] = request_id
        return await asyncio.get_running_loop().run_in_executor(
            pool or self.pool, _run_wsgi, self.wsgi, environ
        )

    async def body(self, receive: Receive, headers: Headers) -> bytes:
        """The whole body, read here in the event loop within the limits."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"the body exceeds {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs in a task
        self._deadlines.watch(task)
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise PayloadTooLarge(f"the body exceeds {self.max_body} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except asyncio.CancelledError:
            if self._deadlines.release(task):
                raise RequestTimeout(
                    f"the request body did not arrive within {self.read_timeout:g}s"
                ) from None
            raise
        finally:
            self._deadlines.release(task)


class AsgiApp:
    """The ASGI face of one worker; ``factory`` boots the app (at lifespan startup)."""

    def __init__(self, factory: Callable[[], BootedApp]) -> None:
        self._factory = factory
        self._runtime: BootedApp | None = None
        self._endpoint: ActionEndpoint | None = None
        self._bridge: WsgiBridge | None = None
        self._bounds = RequestBounds()
        self._mounts: tuple[AsgiMount, ...] = ()
        self._probe_paths: frozenset[str] = PROBES
        # Health probes (and routes marked probe) have threads of their own: they never
        # queue behind calls.
        self._probes: ThreadPoolExecutor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            mount = self._mount_for(scope["path"])
            if mount is not None:
                await mount.app(scope, receive, send)
            elif kind == "http":
                await self._http(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1003})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _mount_for(self, path: str) -> AsgiMount | None:
        for mount in self._mounts:
            if path.startswith(mount.prefix) or path + "/" == mount.prefix:
                return mount
        return None

    # --- lifespan ---------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await loop.run_in_executor(None, self.start)
                    assert self._bridge is not None and self._runtime is not None
                    for mount in self._mounts:
                        if mount.startup is not None:
                            await mount.startup(self._runtime, self._bridge.pool)
                except Exception as exc:  # the server stops this worker and says why
                    log.exception("the worker could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for mount in self._mounts:
                    if mount.shutdown is not None:
                        try:
                            await mount.shutdown()
                        except Exception:  # the app must still stop
                            log.exception("an ASGI mount failed to shut down")
                await loop.run_in_executor(None, self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        """Boot this worker's app (the server calls it once, before serving)."""
        runtime = self._factory()
        flask_app = runtime.http
        if flask_app is None:
            raise RuntimeError("the factory must return an app booted with its HTTP edge")
        config = runtime.config
        self._bridge = WsgiBridge(
            flask_app,
            ThreadPoolExecutor(int(config["http.threads"]), thread_name_prefix="call"),
            read_timeout=float(config["http.read_timeout"]),
            max_body=int(config["http.max_body_bytes"]),
        )
        self._endpoint = ActionEndpoint.for_runtime(runtime)
        self._bounds = RequestBounds.from_config(config)
        self._mounts = tuple(runtime.app_manager.asgi_mounts())
        self._probe_paths = PROBES | {r.path for r in runtime.app_manager.routes() if r.probe}
        self._probes = ThreadPoolExecutor(2, thread_name_prefix="probe")
        self._runtime = runtime

    def stop(self) -> None:
        """Stop this worker's app once the server has drained its requests."""
        if self._bridge is not None:
            self._bridge.pool.shutdown(wait=True)
        if self._probes is not None:
            self._probes.shutdown(wait=True)
        if self._runtime is not None:
            self._runtime.close()
        self._runtime = self._endpoint = self._bridge = self._probes = None
        self._mounts = ()

    # --- requests ---------------------------------------------------------------------

    async def _wait(self, scope: Scope, headers: Headers, body: bytes, request_id: str) -> Answer:
        """``GET /api/v1/executions/<id>?wait=N`` on the event loop: each look is a quick
        read in the call threads; the waiting between looks holds no thread."""
        assert self._bridge is not None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("wait", "")
        rest = [(k, v) for k, v in query if k != "wait"]
        look = {**scope, "query_string": urlencode(rest).encode("latin-1")}
        try:
            seconds = wait_seconds(given)
        except ActionError as error:
            return ActionEndpoint.problem(error, request_id)
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            answer = await self._bridge.run(look, headers, body, request_id=request_id)
            loop_time = asyncio.get_running_loop().time()
            if answer.status != 200 or loop_time >= deadline or finished(answer):
                return answer
            await asyncio.sleep(min(WAIT_POLL, deadline - loop_time))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint, bridge = self._endpoint, self._bridge
        if endpoint is None or bridge is None:
            raise RuntimeError("the app has not started (the server must run its lifespan)")
        headers = Headers.from_asgi(scope["headers"])
        request_id = request_id_of(headers.get("x-request-id"))
        try:
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            self._bounds.check(target, scope["headers"])
            body = await bridge.body(receive, headers)
        except ActionError as error:
            await send_answer(send, endpoint.problem(error, request_id))
            return
        except _Disconnected:
            return
        path: str = scope["path"]
        if scope["method"] == "POST" and path.startswith(PREFIX):
            client = scope.get("client")
            answer = await asyncio.get_running_loop().run_in_executor(
                bridge.pool,
                endpoint.answer,
                path[len(PREFIX) :],
                headers,
                body,
                client[0] if client else None,
                request_id,
            )
        elif scope["method"] == "GET" and path.startswith(EXECUTIONS) and _waits(scope):
            answer = await self._wait(scope, headers, body, request_id)
        elif path in self._probe_paths:
            answer = await bridge.run(scope, headers, body, self._probes, request_id=request_id)
        else:
            answer = await bridge.run(scope, headers, body, request_id=request_id)
        await send_answer(send, answer)


def _waits(scope: Scope) -> bool:
    query = (scope.get("query_string") or b"").decode("latin-1")
    return any(name == "wait" for name, _ in parse_qsl(query, keep_blank_values=True))


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers
    ]
    if not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


# --- the Flask app, as WSGI (PEP 3333) ------------------------------------------------------


def _environ(scope: Scope, headers: Headers, body: bytes) -> dict[str, Any]:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        # WSGI carries the path as the bytes of the URL, each one a latin-1 character.
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for name, value in headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name != "content-length":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _run_wsgi(flask_app: Flask, environ: dict[str, Any]) -> Answer:
    started: list[Any] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable; Flask never uses it

    result: Iterable[bytes] = flask_app.wsgi_app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if callable(close):
            close()
    status, headers = started
    return Answer(int(status[:3]), list(headers), body)
