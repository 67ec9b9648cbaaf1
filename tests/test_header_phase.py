"""The header phase of a served process, bounded while it is read: size, time, connections.

Raw sockets against ``python app.py serve``: a header that never ends, heads that trickle,
connections that send nothing, and more connections than a worker holds; ``/health/live``
is timed alongside.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.transports.server_protocol import REFUSED, sweep_interval
from tests.served import Server, running

HEADER_TIMEOUT = 2.0
MAX_CONNECTIONS = 200
SWEEP = sweep_interval(HEADER_TIMEOUT)
PROBE_MS = 1000  # a liveness probe's bound while under attack (it took 2.8-9.9 s before)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "SB_HTTP__HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s",
        "SB_HTTP__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with running(tmp_path_factory.mktemp("head"), "serve", env=env) as served:
        yield served


def connect(server: Server) -> socket.socket:
    host, port = server.base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes (or ``timeout``)."""
    sock.settimeout(timeout)
    got = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


def problem_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return status, fields, json.loads(body)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def probe_ms(server: Server) -> float:
    started = time.perf_counter()
    assert server.get("/health/live").status == 200
    return (time.perf_counter() - started) * 1000


def test_a_header_that_never_ends_is_431_and_probes_keep_answering(server: Server) -> None:
    """Four clients stream header bytes as fast as they can for three seconds, reconnecting
    whenever they are cut off: each connection gets the 431 problem after at most the
    head's bound, the worker's memory stays flat and every liveness probe answers."""
    before = rss_mib(server.process.pid)
    answers: list[bytes] = []
    sent_per_connection: list[int] = []
    stop = time.monotonic() + 3.0

    def attack() -> None:
        while time.monotonic() < stop:
            sock = connect(server)
            sent = 0
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < 2**20:  # until refused (the stop only ends reconnecting)
                    sock.sendall(b"a" * 4096)
                    sent += 4096
            sent_per_connection.append(sent)
            answers.append(read_all(sock, timeout=5))
            sock.close()

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for thread in attackers:
        thread.start()
    probes = []
    while any(thread.is_alive() for thread in attackers):
        probes.append(probe_ms(server))
        time.sleep(0.05)
    for thread in attackers:
        thread.join()

    assert len(probes) >= 20
    assert max(probes) < PROBE_MS, probes
    assert answers and all(answer for answer in answers)
    for answer in answers:
        status, fields, body = problem_of(answer)
        assert status == 431
        assert fields["content-type"] == "application/problem+json"
        assert fields["connection"] == "close"
        assert body["type"] == "/problems/headers-too-large"
        assert body["request_id"] == fields["x-request-id"]
    assert rss_mib(server.process.pid) - before < 40


def test_a_trickled_head_is_408_after_header_timeout(server: Server) -> None:
    """However slowly the bytes come, the head must be complete within
    ``http.header_timeout`` of its first byte; silent connections are closed unanswered."""
    trickling = [connect(server) for _ in range(100)]
    silent = [connect(server) for _ in range(10)]
    started = time.monotonic()
    for sock in trickling:
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
    deadline = started + HEADER_TIMEOUT + SWEEP + 1.0
    while time.monotonic() < deadline:
        for sock in trickling:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        time.sleep(0.25)
    assert probe_ms(server) < PROBE_MS
    for sock in trickling:
        status, _, body = problem_of(read_all(sock, timeout=3))
        assert status == 408
        assert body["type"] == "/problems/request-timeout"
        assert f"within {HEADER_TIMEOUT:g}s" in str(body["detail"])
        sock.close()
    for sock in silent:
        assert read_all(sock, timeout=3) == b""
        sock.close()
    assert time.monotonic() - started < HEADER_TIMEOUT + SWEEP + 4.5
    # A head sent whole, after all that, is served.
    assert probe_ms(server) < PROBE_MS


def test_a_slow_head_within_the_timeout_is_served(server: Server) -> None:
    sock = connect(server)
    for part in (b"GET /health/live HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
        sock.sendall(part)
        time.sleep(HEADER_TIMEOUT / 4)
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    sock.close()


def test_connections_beyond_max_connections_get_the_fixed_503(server: Server) -> None:
    """Open heads hold their connections; those beyond the cap are answered at once with
    the fixed text and closed, and room comes back when connections close."""
    extra = 8
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):
            sock = connect(server)
            sock.sendall(b"GET /health/live HTTP/1.1\r\n")  # an open head holds it
            socks.append(sock)
        time.sleep(0.5)  # well within the header timeout: nobody was cut off yet
        answered = []
        for sock in socks:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK):
                    answered.append(sock)
        # Connections of earlier tests may still be closing: at least the extra ones.
        assert extra <= len(answered) <= extra + 5
        for sock in answered:
            sock.setblocking(True)
            assert read_all(sock, timeout=3) == REFUSED
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.3)
    assert probe_ms(server) < PROBE_MS


def test_keep_alive_and_pipelined_requests_are_not_cut_off(server: Server) -> None:
    """A large body and the start of the next request in one read are not one head: both
    requests are answered, the second after its head is completed in a later read."""
    padding = "x" * 40_000  # more than a head may take: the body is not counted as head
    body = json.dumps({"message": "hi", "padding": padding}).encode()
    first = (
        b"POST /api/v1/actions/system.echo HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    second = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock = connect(server)
    sock.sendall(first + second[:20])
    time.sleep(0.3)
    sock.sendall(second[20:])
    answers = read_all(sock)
    sock.close()
    assert answers.count(b"HTTP/1.1 ") == 2, answers[:300]
    assert answers.startswith(b"HTTP/1.1 422")  # the padding is no declared param
    assert b"HTTP/1.1 200" in answers and b"431" not in answers.split(b"\r\n")[0]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 60_000, 414),
        (b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000, 431),
    ],
)
def test_an_unfinished_head_sent_in_one_read_is_refused_at_once(
    server: Server, head: bytes, status: int
) -> None:
    """The first read of a connection counts whole: a large unfinished head is refused at
    once, not held until the header timeout."""
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(head)
    answer = read_all(sock, timeout=HEADER_TIMEOUT + 2)
    sock.close()
    assert problem_of(answer)[0] == status
    assert time.monotonic() - started < HEADER_TIMEOUT / 2
