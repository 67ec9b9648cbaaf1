"""Slow clients: connections that trickle their bodies must hold no thread.

200 connections send their headers and then one byte of body a second. Meanwhile
``/health/live`` and a normal call are timed against the same server; afterwards the
trickling connections must have been answered 408 once ``http.read_timeout`` passed.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from dataclasses import dataclass

REQUEST = (
    b"POST /api/v1/actions/system.echo HTTP/1.1\r\nHost: bench\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
)


@dataclass(frozen=True)
class SlowClients:
    clients: int
    live_ms_before: float  # median
    live_ms_during: float  # worst
    call_ms_before: float
    call_ms_during: float
    cut_off: int  # connections answered 408
    cut_off_after_s: float  # when the last one was


def _time(port: int, method: str, path: str, body: bytes | None = None) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path} answered {response.status}")
    return elapsed


def _samples(port: int, count: int) -> tuple[list[float], list[float]]:
    live, call = [], []
    for _ in range(count):
        live.append(_time(port, "GET", "/health/live"))
        call.append(_time(port, "POST", "/api/v1/actions/system.echo", b'{"message":"hi"}'))
        time.sleep(0.05)
    return live, call


def measure(port: int, clients: int = 200) -> SlowClients:
    live_before, call_before = _samples(port, 10)
    sockets = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(REQUEST)
        sockets.append(sock)
    opened = time.monotonic()
    stop = threading.Event()
    answered: dict[int, float] = {}

    def trickle() -> None:
        while not stop.wait(1.0):
            for index, sock in enumerate(sockets):
                if index in answered:
                    continue
                try:
                    sock.sendall(b" ")
                except OSError:
                    answered.setdefault(index, time.monotonic() - opened)

    def read_answers() -> None:
        for sock in sockets:
            sock.settimeout(0.01)
        while not stop.is_set() and len(answered) < clients:
            for index, sock in enumerate(sockets):
                if index in answered:
                    continue
                try:
                    head = sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    head = b""
                if head.startswith(b"HTTP/1.1 408") or not head:
                    answered[index] = time.monotonic() - opened if head else -1.0
            time.sleep(0.05)

    threads = [threading.Thread(target=trickle), threading.Thread(target=read_answers)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        live_during, call_during = _samples(port, 10)
        deadline = time.monotonic() + 30
        while len(answered) < clients and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in sockets:
            sock.close()
    cut = [after for after in answered.values() if after >= 0]
    return SlowClients(
        clients,
        statistics.median(live_before),
        max(live_during),
        statistics.median(call_before),
        max(call_during),
        len(cut),
        max(cut, default=0.0),
    )
