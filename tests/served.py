"""A real ``python app.py`` process spoken to over real HTTP: start, ask, stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app import ROOT
from tests.servers import free_port

BOOT_SECONDS = 30
STOP_SECONDS = 20


def production_secrets(work: Path) -> dict[str, str]:
    """The environment of a production configuration whose secrets (a new Ed25519 signing
    key, an API-key pepper) are files in ``work/secrets``."""
    secrets = work / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (secrets / "jwt.private_key").write_bytes(pem)
    (secrets / "api_keys.pepper").write_text(os.urandom(32).hex())
    (secrets / "executions.secret_key").write_text(os.urandom(32).hex())
    return {"APP_ENV": "production", "SECRETS_DIR": str(secrets), "SB_SECRETS__MOUNTS": ""}


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "MODULES_PATH"}
    environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='sbtest')}/app.db"
    environ.update({"APP_ENV": "test", **(extra or {})})
    return environ


@dataclass
class Response:
    status: int
    headers: Message  # field names in any case, as HTTP has them
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return Response(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers, error.read())


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path
    env: dict[str, str]  # the process's whole environment (run a CLI command beside it)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
        return http(
            "POST", self.base + path, body, {"Content-Type": "application/json", **(headers or {})}
        )

    def get(self, path: str) -> Response:
        return http("GET", self.base + path)

    def stop(self) -> int:
        """SIGTERM, then wait; the exit code (fails the test when it does not exit)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {STOP_SECONDS}s of SIGTERM:\n{self.output()}")


def wait_until_live(server: Server) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"serve exited with {server.process.returncode} before answering:\n"
                + server.output()
            )
        with contextlib.suppress(OSError):  # refused until it listens
            if server.get("/health/live").status == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"serve did not answer /health/live within {BOOT_SECONDS}s:\n{server.output()}")


@contextlib.contextmanager
def running(log_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """``python app.py <args> --port <free> --host 127.0.0.1``; killed on the way out."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full = environment(env)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "app.py", *args, "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so the workers go down with it
        )
    server = Server(process, f"http://127.0.0.1:{port}", log, full)
    try:
        wait_until_live(server)
        yield server
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``python app.py <args>`` beside ``server``: its environment, its database."""
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def promote(server: Server, email: str) -> None:
    """``python app.py users promote EMAIL admin`` on the server's database."""
    done = cli(server, "users", "promote", email, "admin")
    assert done.returncode == 0, done.stderr
