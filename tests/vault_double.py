"""An HTTP double of the small part of Vault's API that VaultClient uses through hvac.

KV v2 (``/v1/<mount>/data/<path>``), token lookup-self / renew-self, AppRole and Kubernetes
login, ``X-Vault-Token`` checks, plus switches a test flips: ``sealed`` (503 "Vault is
sealed"), ``stop()``/``start()`` on the same port (connection refused), ``expire(token)``
(the token stops working, so renewal fails), ``denied`` globs (403) and per-path counters.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, Any]]

DENIED: Answer = (403, {"errors": ["permission denied"]})


@dataclass
class Token:
    ttl: int
    renewable: bool
    policies: tuple[str, ...] = ("default",)


class VaultDouble:
    """A threaded fake Vault on 127.0.0.1; ``url`` is what ``vault.addr`` should be."""

    def __init__(self, *, mount: str = "secret", token_ttl: int = 3600) -> None:
        self.mount = mount
        self.token_ttl = token_ttl
        self.renewable = True
        self.sealed = False
        self.secrets: dict[str, dict[str, Any]] = {}
        self.approles: dict[str, str] = {}  # role_id -> secret_id
        self.kubernetes: dict[str, str] = {}  # role -> service account JWT
        self.denied: set[str] = set()  # KV path globs every token is refused
        self.tokens: dict[str, Token] = {}
        self.issued: list[str] = []  # every token ever handed out (for log-leak checks)
        self.requests: Counter[str] = Counter()  # "METHOD /v1/path" -> count
        self.logins: Counter[str] = Counter()  # auth method -> successful logins
        self._lock = threading.Lock()
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> VaultDouble:
        """Listen (on the same port as before after a ``stop()``)."""
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: clients now get "connection refused"."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --- test controls ----------------------------------------------------------------

    def issue_token(self, *, ttl: int | None = None, renewable: bool | None = None) -> str:
        token = "hvs." + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = Token(
                self.token_ttl if ttl is None else ttl,
                self.renewable if renewable is None else renewable,
            )
            self.issued.append(token)
        return token

    def expire(self, token: str | None = None) -> None:
        """Make ``token`` (default: every token) invalid, as if its TTL ran out."""
        with self._lock:
            if token is None:
                self.tokens.clear()
            else:
                self.tokens.pop(token, None)

    def put(self, path: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.secrets[path] = dict(data)

    def reads(self, path: str) -> int:
        """How many KV reads of ``path`` reached the double."""
        return self.requests[f"GET /v1/{self.mount}/data/{path}"]

    # --- the API ----------------------------------------------------------------------

    def handle(self, method: str, path: str, token: str | None, body: dict[str, Any]) -> Answer:
        with self._lock:
            self.requests[f"{method} {path}"] += 1
        if self.sealed:
            return 503, {"errors": ["Vault is sealed"]}
        if path == "/v1/auth/approle/login" and method in ("POST", "PUT"):
            expected = self.approles.get(str(body.get("role_id")))
            if expected is None or not secrets.compare_digest(expected, str(body.get("secret_id"))):
                return 400, {"errors": ["invalid role or secret ID"]}
            return self._login("approle")
        if path == "/v1/auth/kubernetes/login" and method in ("POST", "PUT"):
            expected = self.kubernetes.get(str(body.get("role")))
            if expected is None or not secrets.compare_digest(expected, str(body.get("jwt"))):
                return DENIED
            return self._login("kubernetes")
        info = self.tokens.get(token or "")
        if info is None:
            return DENIED
        if path == "/v1/auth/token/lookup-self" and method == "GET":
            return 200, {
                "data": {"ttl": info.ttl, "renewable": info.renewable, "policies": info.policies}
            }
        if path == "/v1/auth/token/renew-self" and method in ("POST", "PUT"):
            if not info.renewable:
                return 400, {"errors": ["lease is not renewable"]}
            return 200, {
                "auth": {
                    "client_token": token,
                    "lease_duration": info.ttl,
                    "renewable": True,
                    "policies": info.policies,
                }
            }
        prefix = f"/v1/{self.mount}/data/"
        if path.startswith(prefix):
            return self._kv(method, path[len(prefix) :], body)
        return 404, {"errors": []}

    def _login(self, method: str) -> Answer:
        token = self.issue_token()
        info = self.tokens[token]
        self.logins[method] += 1
        auth = {
            "client_token": token,
            "lease_duration": info.ttl,
            "renewable": info.renewable,
            "policies": list(info.policies),
        }
        return 200, {"auth": auth}

    def _kv(self, method: str, secret_path: str, body: dict[str, Any]) -> Answer:
        if any(fnmatchcase(secret_path, glob) for glob in self.denied):
            return DENIED
        if method == "GET":
            with self._lock:
                data = self.secrets.get(secret_path)
            if data is None:
                return 404, {"errors": []}
            metadata = {"version": 1, "deletion_time": "", "destroyed": False}
            return 200, {"data": {"data": dict(data), "metadata": metadata}}
        if method in ("POST", "PUT"):
            self.put(secret_path, dict(body.get("data") or {}))
            return 200, {"data": {"version": 1}}
        return 405, {"errors": [f"unsupported method {method}"]}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stopped double refuses the next request
    # instead of leaving a kept-alive connection half open.
    protocol_version = "HTTP/1.0"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        path = self.path.split("?", 1)[0]
        double: VaultDouble = self.server.double  # type: ignore[attr-defined]
        status, payload = double.handle(self.command, path, self.headers.get("X-Vault-Token"), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean
