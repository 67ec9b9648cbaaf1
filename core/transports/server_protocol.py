"""The HTTP protocol ``serve`` runs: uvicorn's httptools protocol, bounded while it reads.

uvicorn hands a request to the app only once its headers are complete, and its httptools
parser buffers a header of any size until then; ``limit_concurrency`` counts only requests
whose headers are complete. So the head of a request (request line and headers) is bounded
here, as the bytes arrive:

- **in size**: a head that grows past what ``http.max_url_bytes``, ``http.max_header_bytes``
  and ``http.max_headers`` allow (with room for the line breaks and separators) gets the 414
  or 431 problem and the connection is closed; nothing more of it is parsed or kept;
- **in time**: a head must be complete within ``http.header_timeout`` of its first byte (of
  the connection, for its first request), however slowly the bytes come; past it, a 408
  ``request-timeout`` problem and close (a connection that sent nothing is just closed).
  One sweeper per worker looks once a second, so a request costs a clock read, not a
  timer;
- **in number**: a worker holds at most ``http.max_connections`` open connections
  (WebSockets included); beyond it a new one gets ``REFUSED``, a fixed 503 text, and is
  closed.

An answer sent mid-head is followed by a lingering close: the worker stops reading what the
client still sends, shuts its side for writing, and closes after ``LINGER`` seconds, so the
client reads the answer instead of a reset. The app's own checks (``RequestBounds``) still
decide exactly, once the headers are complete.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core.base.errors import ActionError, HeadersTooLarge, RequestTimeout, UriTooLong
from core.base.request_ids import new_request_id
from core.config.config import Config
from core.transports.http_actions import PROBLEM_JSON

LINGER = 2.0  # seconds a refused connection is drained before it is closed
MAX_LINGERING = 256  # refused connections drained at once; beyond, closed at once
_LINE_OVERHEAD = 4  # ": " and CRLF around each header field
_REQUEST_LINE_OVERHEAD = 64  # method, spaces, version and line breaks

REFUSED_TEXT = b"this worker holds its http.max_connections connections; retry shortly\n"
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(REFUSED_TEXT)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + REFUSED_TEXT
)


@dataclass(frozen=True)
class HeadBounds:
    """How large and how slow a request's head may be, and how many connections a worker
    holds (``http.*`` settings)."""

    max_url_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    max_connections: int

    @classmethod
    def from_config(cls, config: Config) -> HeadBounds:
        return cls(
            max_url_bytes=int(config["http.max_url_bytes"]),
            max_header_bytes=int(config["http.max_header_bytes"]),
            max_headers=int(config["http.max_headers"]),
            header_timeout=float(config["http.header_timeout"]),
            max_connections=int(config["http.max_connections"]),
        )

    @property
    def max_head_bytes(self) -> int:
        """The most bytes a head within the limits can take on the wire."""
        return (
            self.max_url_bytes
            + self.max_header_bytes
            + _LINE_OVERHEAD * self.max_headers
            + _REQUEST_LINE_OVERHEAD
        )


def sweep_interval(timeout: float) -> float:
    """How often the sweeper looks for heads older than ``timeout``."""
    return max(0.05, min(1.0, timeout / 4))


def protocol(bounds: HeadBounds) -> Any:
    """What uvicorn's ``http=`` takes: the bounded protocol with ``bounds`` (picklable, so
    worker processes get it)."""
    return functools.partial(BoundedHttpToolsProtocol, bounds=bounds)


def problem_answer(error: ActionError) -> bytes:
    """A whole HTTP/1.1 answer carrying ``error``'s problem, closing the connection."""
    request_id = new_request_id()
    body = error.problem_json(request_id).encode()
    return b"".join(
        [
            f"HTTP/1.1 {error.status} {error.title}\r\n".encode("latin-1"),
            f"content-type: {PROBLEM_JSON}\r\n".encode("latin-1"),
            f"content-length: {len(body)}\r\n".encode("latin-1"),
            f"x-request-id: {request_id}\r\n".encode("latin-1"),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head of each request bounded (module doc)."""

    def __init__(self, *args: Any, bounds: HeadBounds, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = bounds
        self.head_started: float | None = None  # loop time the current head began
        self._head_bytes = 0
        self._begun = False  # a byte of the current request has arrived
        self._fresh = False  # the current request began in the chunk being parsed
        self._completed = False  # a request ended in the chunk being parsed
        self._discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sweeper = _HeadSweeper.of(self.server_state, self.loop, self.bounds.header_timeout)
        if len(self.connections) >= self.bounds.max_connections:
            self.transport = transport
            if sweeper.lingering < MAX_LINGERING:
                self._linger(REFUSED, sweeper)
            else:  # a flood: no time for goodbyes
                transport.write(REFUSED)
                transport.close()
            return
        super().connection_made(transport)
        self.head_started = self.loop.time()
        sweeper.ensure()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._fresh = self._completed = False
        super().data_received(data)
        if self.head_started is None or self._discarding or self.transport.is_closing():
            return
        if self._fresh and self._completed:
            # The head began inside this chunk after an earlier request ended in it: how
            # much of the chunk was that request's is not known, so this head is counted
            # from the next chunk on (at most one read more). A head that begins a chunk
            # on its own is counted whole.
            return
        # The head is still incomplete after this chunk: every byte of it was head.
        self._head_bytes += len(data)
        if self._head_bytes > self.bounds.max_head_bytes:
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined head overflows while the answer before it is being sent:
                # parse no more, and close once that answer is out.
                self._discarding = True
                self.cycle.keep_alive = False
                return
            if len(getattr(self, "url", b"")) > self.bounds.max_url_bytes:
                error: ActionError = UriTooLong(
                    f"the request target exceeds {self.bounds.max_url_bytes} bytes"
                )
            else:
                error = HeadersTooLarge(
                    f"the request headers exceed {self.bounds.max_header_bytes} bytes"
                )
            self._linger(problem_answer(error))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = self._fresh = True
        self._head_bytes = 0
        if self.head_started is None:
            self.head_started = self.loop.time()

    def on_message_complete(self) -> None:
        self._completed = True
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self.head_started = None
        self._head_bytes = 0
        self._begun = False
        super().on_headers_complete()

    def header_timed_out(self) -> None:
        """The sweeper found the head older than ``http.header_timeout``."""
        if self._discarding or self.transport is None or self.transport.is_closing():
            return
        if not self._begun:  # a connection that never sent a request: no answer is due
            self.transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits for the answer before it (reading is paused): its
            # time starts when that answer is out.
            self.head_started = self.loop.time()
            return
        timeout = self.bounds.header_timeout
        self._linger(
            problem_answer(
                RequestTimeout(f"the request headers did not arrive within {timeout:g}s")
            )
        )

    def _linger(self, answer: bytes, sweeper: _HeadSweeper | None = None) -> None:
        """Send ``answer``, read no more, and close once the client had time to read it."""
        self._discarding = True
        self.head_started = None
        transport = self.transport
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        if sweeper is None:
            self.loop.call_later(LINGER, transport.close)
            return
        sweeper.lingering += 1  # refused connections: not among the server's connections

        def close() -> None:
            sweeper.lingering -= 1
            transport.close()

        self.loop.call_later(LINGER, close)


class _HeadSweeper:
    """Closes, once a second, the connections of one server whose head is too old."""

    _of: ClassVar[weakref.WeakKeyDictionary[ServerState, _HeadSweeper]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop, timeout: float):
        self.state = state
        self.loop = loop
        self.timeout = timeout
        self.lingering = 0  # refused connections still being drained
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(
        cls, state: ServerState, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> _HeadSweeper:
        sweeper = cls._of.get(state)
        if sweeper is None:
            sweeper = cls._of[state] = cls(state, loop, timeout)
        return sweeper

    def ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        interval = sweep_interval(self.timeout)
        while self.state.connections:
            await asyncio.sleep(interval)
            oldest = self.loop.time() - self.timeout
            for connection in list(self.state.connections):
                if not isinstance(connection, BoundedHttpToolsProtocol):
                    continue  # a WebSocket: its head was complete
                started = connection.head_started
                if started is not None and started <= oldest:
                    connection.header_timed_out()
