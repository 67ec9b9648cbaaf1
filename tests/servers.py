"""Real PostgreSQL and Redis servers for the contract tests, on free loopback ports.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` user (``runuser``) in a data directory under /tmp that it owns. Each server
starts once per test session and is stopped at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """The server's binaries are missing or it did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ServerUnavailable(f"{what} did not listen on {port} within {timeout}s:\n{text}")


def pg_bin() -> Path:
    """PG_BIN, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise ServerUnavailable("no PostgreSQL binaries: set PG_BIN or install postgresql")
    return Path(found[-1])


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster; ``url(db)`` gives a DSN for a database in it."""

    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="sbpg", dir="/tmp"))
    )
    _as_root: bool = field(default_factory=lambda: os.geteuid() == 0)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> PostgresServer:
        binaries = pg_bin()
        if not (binaries / "initdb").exists():
            raise ServerUnavailable(f"no initdb in {binaries}")
        data = self.directory / "data"
        if self._as_root:
            shutil.chown(self.directory, "postgres", "postgres")
        done = self._run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        if done.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {done.stderr}")
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = self.directory / "server.log"
        started = self._run(
            str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"
        )
        if started.returncode != 0:
            raise ServerUnavailable(
                f"pg_ctl start failed: {started.stderr}\n"
                f"{log.read_text(errors='replace') if log.exists() else ''}"
            )
        _wait_for_port(self.port, 30, "postgres", log)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        """Stop (dropping every connection) and start again on the same port."""
        log = self.directory / "server.log"  # also keeps the server off pg_ctl's stdout
        done = self._run(
            str(pg_bin() / "pg_ctl"),
            *("-D", str(self.directory / "data"), "-l", str(log), "-w", "restart", "-m", "fast"),
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"pg_ctl restart failed: {done.stderr}")
        _wait_for_port(self.port, 30, "postgres", log)

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(self.url())
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def stop(self) -> None:
        self._run(
            str(pg_bin() / "pg_ctl"), "-D", str(self.directory / "data"), "stop", "-m", "fast"
        )
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class RedisServer:
    """A private redis-server without persistence."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sbredis")))
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (make servers installs it)")
        log = self.directory / "redis.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, 20, "redis-server", log)
        return self

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (outage tests)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
