"""The Socket.IO rows of ``make bench``.

- **Calls**: 50 sockets (python-socketio's asyncio client, one process) each send ``call``
  ``system.echo`` and wait for the ack, again and again; acks per second, p50 and p99.
- **Idle sockets**: 2,000 authenticated sockets connect to a one-worker server and stay;
  the worker's resident memory before and after gives the cost per 1,000, and
  ``/health/live`` is timed while they are connected.
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import socketio

ECHO = {"action": "system.echo", "params": {"message": "hi"}}


@dataclass(frozen=True)
class Calls:
    sockets: int
    acks_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Idle:
    sockets: int
    connected: int
    rss_mib_before: float
    rss_mib_after: float
    live_ms: float  # median /health/live with the sockets connected

    @property
    def mib_per_1000(self) -> float:
        return (self.rss_mib_after - self.rss_mib_before) / self.connected * 1000


def raise_file_limit(wanted: int) -> None:
    """Room for ``wanted`` sockets in this process and the servers it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _connect(base: str, key: str, count: int, batch: int = 100) -> list[socketio.AsyncClient]:
    clients: list[socketio.AsyncClient] = []
    for start in range(0, count, batch):
        group = [
            socketio.AsyncClient(reconnection=False)
            for _ in range(start, min(count, start + batch))
        ]
        results = await asyncio.gather(
            *(
                c.connect(base, auth={"api_key": key}, transports=["websocket"], wait_timeout=30)
                for c in group
            ),
            return_exceptions=True,
        )
        clients.extend(c for c, r in zip(group, results, strict=True) if r is None)
    return clients


async def _close(clients: list[socketio.AsyncClient]) -> None:
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


async def _calls(base: str, key: str, sockets: int, seconds: float) -> Calls:
    clients = await _connect(base, key, sockets)
    latencies: list[float] = []
    errors = 0

    async def drive(client: socketio.AsyncClient, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until and client.connected:
            started = time.perf_counter()
            try:
                answer = await client.call("call", ECHO, timeout=30)
            except socketio.exceptions.SocketIOError:  # a timeout, a dropped socket
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if "data" not in answer:
                errors += 1

    try:
        await asyncio.gather(*(drive(c, time.perf_counter() + 1.0) for c in clients))  # warm
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(drive(c, started + seconds) for c in clients))
        elapsed = time.perf_counter() - started
    finally:
        await _close(clients)
    ordered = sorted(latencies)
    return Calls(
        len(clients),
        len(ordered) / elapsed,
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        errors,
    )


def calls(base: str, key: str, sockets: int = 50, seconds: float = 4.0) -> Calls:
    return asyncio.run(_calls(base, key, sockets, seconds))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _live_ms(port: int) -> float:
    samples = []
    for _ in range(10):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        connection.request("GET", "/health/live")
        connection.getresponse().read()
        samples.append((time.perf_counter() - started) * 1000)
        connection.close()
    return statistics.median(samples)


async def _idle(port: int, pid: int, key: str, count: int) -> Idle:
    base = f"http://127.0.0.1:{port}"
    warm = await _connect(base, key, 10)  # the first connection's imports and caches
    await _close(warm)
    await asyncio.sleep(1)
    before = _rss_mib(pid)
    clients = await _connect(base, key, count)
    try:
        await asyncio.sleep(2)
        after = _rss_mib(pid)
        live = await asyncio.get_running_loop().run_in_executor(None, _live_ms, port)
    finally:
        await _close(clients)
    return Idle(count, len(clients), before, after, live)


def idle(port: int, pid: int, key: str, count: int = 2000) -> Idle:
    raise_file_limit(count * 2 + 256)
    return asyncio.run(_idle(port, pid, key, count))
