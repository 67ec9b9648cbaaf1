"""The HTTP rows of ``make bench``: servers side by side in one run, measured in turns.

Every server runs with the same number of worker processes. Rounds alternate the targets
(A B C D E, A B C D E, ...) and the table reports medians, so a machine that slows down
mid-run slows every row alike; the ratios to the bare routes are the figures to read.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.bench import load, realtime
from tests.served import production_secrets
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BODY = b'{"message":"hi"}'
JSON = {"Content-Type": "application/json"}
UNLIMITED = "1000000000/minute"  # limits are checked on every call, as shipped; never hit

BENCH_ACTIONS = """
actions:
  echo:
    summary: Return the message (any credential)
    handler: handlers:echo
    auth: any
    params:
      message: {type: string, maxLength: 10000, required: true}
"""
BENCH_HANDLERS = "def echo(ctx, *, message):\n    return {'message': message}\n"


@dataclass
class Target:
    """One row: a server, the path it is asked and the headers it gets."""

    name: str
    port: int
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    kind: str = "switchboard"  # bare | switchboard | candidate (another server, bare route)
    runs: list[load.Load] = field(default_factory=list)
    round_trips: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(run, attribute) for run in self.runs))

    def ratio(self, base: Target) -> float:
        """The median over rounds of this target's req/s over ``base``'s in the same round
        (a round's machine speed cancels out)."""
        pairs = zip(self.runs, base.runs, strict=True)
        return float(statistics.median(mine.rps / theirs.rps for mine, theirs in pairs))


def _wait_ready(port: int, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} did not answer {path}:\n{log.read_text()[-3000:]}")


@contextmanager
def _process(
    command: list[str], env: Mapping[str, str], port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(port, "/health/live", process, log)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def switchboard_env(work: Path, redis_url: str, workers: int) -> dict[str, str]:
    """A production configuration of Switchboard for the bench (keys in secret files)."""
    module = work / "modules" / "bench"
    module.mkdir(parents=True, exist_ok=True)
    (module / "actions.yaml").write_text(BENCH_ACTIONS)
    (module / "handlers.py").write_text(BENCH_HANDLERS)
    return {
        **production_secrets(work),
        "DATABASE_URL": f"sqlite:///{work}/bench.db",
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": "bench:",
        "MODULES_PATH": str(work / "modules"),
        "SB_HTTP__WORKERS": str(workers),
        "SB_HTTP__READ_TIMEOUT": "3s",
        "SB_RATELIMIT__IP": UNLIMITED,
        "SB_RATELIMIT__USER": UNLIMITED,
        "SB_RATELIMIT__API_KEY": UNLIMITED,
        "SB_REALTIME__LIMITS": UNLIMITED,  # per socket: the Socket.IO row drives 50 flat out
    }


def credentials(env: Mapping[str, str]) -> tuple[str, str]:
    """An access token and an API key, made by an app on the bench's database and Redis."""
    from app import create_app
    from core.transports.flask_app import shutdown_app
    from core.transports.http import extension
    from managers.api_keys.manager import ApiKeyManager
    from managers.jwt.manager import JWTManager

    flask_app = create_app({**env, "SB_HTTP__WORKERS": "1", "SB_LOGGING__LEVEL": "WARNING"})
    try:
        managers = extension(flask_app).app_manager
        token = managers.get(JWTManager).issue_pair("bench-user", [])["access_token"]
        _, key = managers.get(ApiKeyManager).create(name="bench", owner=None, scopes=[])
    finally:
        shutdown_app(flask_app)
    return str(token), key


def count_round_trips(redis_url: str, target: Target, calls: int = 20) -> float:
    """Client commands per call on the bench's keys (MONITOR; script-internal ones are
    marked ``lua`` and left out)."""
    watcher = redis.Redis.from_url(redis_url)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop_word = f"stop-{os.getpid()}-{time.monotonic_ns()}"

    def watch() -> None:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for command in monitor.listen():
                seen.append(command)
                if command["command"] == f"ECHO {stop_word}":
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    for _ in range(calls):
        connection.request("POST", target.path, body=BODY, headers={**JSON, **target.headers})
        connection.getresponse().read()
    connection.close()
    redis.Redis.from_url(redis_url).echo(stop_word)
    thread.join(10)
    watcher.close()
    ours = [c for c in seen if c.get("client_type") != "lua" and "bench:" in c["command"]]
    return len(ours) / calls


@dataclass
class Result:
    targets: list[Target]
    tool: str
    workers: int
    rounds: int
    seconds: float
    slow: Any = None  # what slow_clients measured
    realtime_calls: Any = None  # Socket.IO acks with 50 sockets (tests/bench/realtime.py)
    realtime_idle: Any = None  # 2,000 idle sockets on one worker


def measure(
    *,
    workers: int = 2,
    rounds: int = 3,
    seconds: float = 5.0,
    slow_clients: Callable[[int], Any] | None = None,
    sockets: bool = True,
) -> Result:
    """Start the bare routes and Switchboard, then load each in turn, ``rounds`` times;
    with ``sockets``, the Socket.IO rows too (a second Switchboard without realtime shows
    what serving it costs the HTTP rows)."""
    work = Path(tempfile.mkdtemp(prefix="sbbench"))
    realtime.raise_file_limit(8192)
    redis_server = RedisServer().start()
    try:
        env = switchboard_env(work, redis_server.url(), workers)
        token, key = credentials(env)
        names = ("gunicorn", "server", "switchboard", "no_realtime", "idle", "granian", "a2wsgi")
        ports = {name: free_port() for name in names}
        gunicorn = [
            PYTHON, "-m", "gunicorn", "-w", str(workers), "-k", "gthread", "--threads", "8",
            "--no-control-socket", "--log-level", "warning",
            "-b", f"127.0.0.1:{ports['gunicorn']}", "tests.bench.bare:app",
        ]  # fmt: skip
        server = [
            PYTHON, "-m", "uvicorn", "--factory", "tests.bench.bare:asgi",
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--host", "127.0.0.1", "--port", str(ports["server"]),
        ]  # fmt: skip
        switchboard = [PYTHON, "app.py", "serve", "--port", str(ports["switchboard"])]
        no_realtime = [PYTHON, "app.py", "serve", "--port", str(ports["no_realtime"])]
        # Other ways to serve the bare route, measured when installed (requirements-dev).
        candidates = []
        if importlib.util.find_spec("granian") is not None:
            candidates.append(
                (
                    "bare Flask route, granian WSGI",
                    "granian",
                    [
                        PYTHON, "-m", "granian", "--interface", "wsgi", "--workers",
                        str(workers), "--blocking-threads", "8", "--log-level", "warning",
                        "--host", "127.0.0.1", "--port", str(ports["granian"]),
                        "tests.bench.bare:app",
                    ],
                )
            )  # fmt: skip
        if importlib.util.find_spec("a2wsgi") is not None:
            candidates.append(
                (
                    "bare Flask route, uvicorn + a2wsgi",
                    "a2wsgi",
                    [
                        PYTHON, "-m", "uvicorn", "--factory", "tests.bench.bare:a2wsgi_app",
                        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
                        "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                        "--host", "127.0.0.1", "--port", str(ports["a2wsgi"]),
                    ],
                )
            )  # fmt: skip
        echo = "/api/v1/actions/system.echo"
        any_echo = "/api/v1/actions/bench.echo"
        targets = [
            Target("bare Flask route, gunicorn gthread", ports["gunicorn"], echo, kind="bare"),
            Target("bare Flask route, Switchboard's server", ports["server"], echo, kind="bare"),
            Target("system.echo, public", ports["switchboard"], echo),
            Target(
                "bench.echo, JWT",
                ports["switchboard"],
                any_echo,
                {"Authorization": f"Bearer {token}"},
            ),
            Target("bench.echo, API key", ports["switchboard"], any_echo, {"X-API-Key": key}),
            *(
                [Target("system.echo, public, realtime off", ports["no_realtime"], echo)]
                if sockets
                else []
            ),
            *(Target(name, ports[port], echo, kind="candidate") for name, port, _ in candidates),
        ]
        with contextlib.ExitStack() as stack:
            stack.enter_context(_process(gunicorn, {}, ports["gunicorn"], work / "gunicorn.log"))
            stack.enter_context(_process(server, {}, ports["server"], work / "server.log"))
            stack.enter_context(
                _process(switchboard, env, ports["switchboard"], work / "switchboard.log")
            )
            if sockets:
                stack.enter_context(
                    _process(
                        no_realtime,
                        {**env, "SB_REALTIME__ENABLED": "false"},
                        ports["no_realtime"],
                        work / "no_realtime.log",
                    )
                )
            for _, port, command in candidates:
                stack.enter_context(_process(command, {}, ports[port], work / f"{port}.log"))
            for target in targets:  # warm: imports, caches, the script, the token cache
                load.run(target.url, BODY, {**JSON, **target.headers}, seconds=1)
            for target in targets:
                if target.kind == "switchboard":
                    target.round_trips = count_round_trips(redis_server.url(), target)
            for _ in range(rounds):
                for target in targets:
                    target.runs.append(
                        load.run(target.url, BODY, {**JSON, **target.headers}, seconds=seconds)
                    )
            slow = slow_clients(ports["switchboard"]) if slow_clients is not None else None
            calls = idle = None
            if sockets:
                calls = realtime.calls(f"http://127.0.0.1:{ports['switchboard']}", key)
                one = [PYTHON, "app.py", "serve", "--port", str(ports["idle"])]
                with _process(
                    one, {**env, "SB_HTTP__WORKERS": "1"}, ports["idle"], work / "idle.log"
                ) as process:
                    idle = realtime.idle(ports["idle"], process.pid, key)
        return Result(targets, load.tool(), workers, rounds, seconds, slow, calls, idle)
    finally:
        redis_server.cleanup()
