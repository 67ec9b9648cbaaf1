"""Load for ``make bench``: wrk when installed, else a small Python generator.

Both keep ``connections`` keep-alive connections busy for ``seconds`` on 127.0.0.1 and
report requests/s, p50 and p99 latency and the count of non-2xx answers.
"""

from __future__ import annotations

import http.client
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Load:
    """One measurement of one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # answers that were not 2xx, plus failed connections


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def run(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    seconds: float,
    connections: int = 16,
    threads: int = 2,
) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, body, headers, seconds=seconds, connections=connections, threads=threads)
    return _python(url, body, headers, seconds, connections)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _millis(text: str) -> float:
    found = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if found is None:
        raise ValueError(f"unexpected latency {text!r}")
    return float(found[1]) * _UNITS[found[2]]


def _lua(body: bytes, headers: Mapping[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    seconds: float,
    connections: int,
    threads: int,
) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(body, headers))
    try:
        output = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output)[1])  # type: ignore[index]
    p50 = _millis(re.search(r"\s50%\s+(\S+)", output)[1])  # type: ignore[index]
    p99 = _millis(re.search(r"\s99%\s+(\S+)", output)[1])  # type: ignore[index]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?(\d+)"):
        found = re.search(pattern, output)
        errors += int(found[1]) if found else 0
    return Load(rps, p50, p99, errors)


def _python(
    url: str, body: bytes, headers: Mapping[str, str], seconds: float, connections: int
) -> Load:
    """Keep-alive clients in threads (slower than wrk: compare rows, not absolute figures)."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match is not None, url
    host, port, path = match[1], int(match[2]), match[3]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        mine: list[float] = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=dict(headers))
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=10)
                ok = False
            mine.append((time.perf_counter() - started) * 1000)
            if not ok:
                with lock:
                    errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(connections)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Load(len(latencies) / elapsed, statistics.median(ordered), p99, errors[0])
