"""A real HTTP server on a loopback address that tests point services at: it records every
request it gets and answers what the test scripted for the path."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str  # as sent, percent-encoding kept
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=dict)  # bytes are sent as they are, the rest as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time


Script = Callable[[Seen], Answer]


class Upstream:
    """``script(seen) -> Answer`` decides every answer (default: 200 echoing the request)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.seen: list[Seen] = []
        self.script: Script = self.echo
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with upstream._lock:
                    upstream.seen.append(seen)
                answer = upstream.script(seen)
                if answer.delay:
                    time.sleep(answer.delay)
                body = (
                    answer.body
                    if isinstance(answer.body, bytes)
                    else json.dumps(answer.body).encode()
                )
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if not answer.drip:
                        self.wfile.write(body)
                    for index in range(len(body) if answer.drip else 0):
                        self.wfile.write(body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(answer.drip)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def echo(seen: Seen) -> Answer:
        return Answer(
            body={
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "body": seen.body.decode() if seen.body else None,
            }
        )

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if path is None or s.path == path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
