"""``make bench``: how fast params validation, the pipeline and the HTTP layer are.

Run as ``python -m tests.bench.run`` from the project root. Every measurement stops at its
call count or its time budget, whichever comes first, so the whole run stays well under
30 seconds; nothing touches the network.
"""

from __future__ import annotations

import importlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import create_app
from core.calls import CallRequest
from core.http import state
from core.params import ParamSpec, ParamsValidator, compile_schema, object_schema
from core.runtime import shutdown_app

BUDGET_SECONDS = 3.0  # per measurement
WARM_UP = 200

SCHEMA = {
    "to": ParamSpec("to", {"type": "string", "minLength": 1}, required=True),
    "amount": ParamSpec(
        "amount", {"type": "integer", "minimum": 1, "maximum": 1_000_000}, required=True
    ),
    "note": ParamSpec("note", {"type": "string", "maxLength": 200}),
    "tags": ParamSpec("tags", {"type": "array", "items": {"type": "string"}, "maxItems": 10}),
}
VALID = {"to": "bob", "amount": 250, "note": "rent for march", "tags": ["home", "monthly"]}


@dataclass
class Row:
    name: str
    calls: int
    seconds: float
    latencies_us: list[float] | None = None  # per call, when measured one by one

    def cells(self) -> list[str]:
        per_call = self.seconds / self.calls * 1e6
        p50 = p99 = "-"
        if self.latencies_us:
            ordered = sorted(self.latencies_us)
            p50 = f"{statistics.median(ordered):.1f}"
            p99 = f"{ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.1f}"
        rate = self.calls / self.seconds
        return [self.name, f"{self.calls:,}", f"{per_call:.2f}", f"{rate:,.0f}", p50, p99]


def batch(name: str, fn: Callable[[], Any], calls: int) -> Row:
    """Time ``fn`` in batches (cheap calls: no per-call clock reads)."""
    for _ in range(WARM_UP):
        fn()
    done, size = 0, 1_000
    start = time.perf_counter()
    while done < calls and time.perf_counter() - start < BUDGET_SECONDS:
        for _ in range(size):
            fn()
        done += size
    return Row(name, done, time.perf_counter() - start)


def one_by_one(name: str, fn: Callable[[], Any], calls: int) -> Row:
    """Time each call of ``fn`` (for percentiles)."""
    for _ in range(WARM_UP):
        fn()
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(latencies) < calls and clock() - start < BUDGET_SECONDS:
        before = clock()
        fn()
        latencies.append((clock() - before) * 1e6)
    return Row(name, len(latencies), clock() - start, latencies)


def validation_rows() -> tuple[list[Row], str | None]:
    """(a) params validation of one valid four-field call."""
    checker = ParamsValidator(SCHEMA)
    schema = object_schema(SCHEMA)
    raw = compile_schema(schema)
    assert checker(VALID) == VALID and raw.is_valid(VALID)
    rows = [
        batch("validate: ParamsValidator (jsonschema-rs)", lambda: checker(VALID), 300_000),
        batch("validate: jsonschema-rs is_valid only", lambda: raw.is_valid(VALID), 300_000),
    ]
    try:
        fastjsonschema = importlib.import_module("fastjsonschema")
    except ImportError:
        return rows, "fastjsonschema not installed (pip install fastjsonschema to compare)"
    fast = fastjsonschema.compile(schema)
    fast(VALID)
    rows.append(batch("validate: fastjsonschema (draft-07)", lambda: fast(VALID), 300_000))
    return rows, None


def app_rows() -> list[Row]:
    """(b) the in-process pipeline and (c) HTTP through the Flask test client."""
    app = create_app({"APP_ENV": "test", "SB_LOGGING__LEVEL": "WARNING"})
    try:
        pipeline = state(app).pipeline
        request = CallRequest(
            action="system.echo",
            params={"message": "hi"},
            request_id="bench",
            transport="bench",
        )
        assert pipeline.invoke(request).data == {"message": "hi"}

        client = app.test_client()
        body = json.dumps({"message": "hi"})

        def post() -> None:
            response = client.post(
                "/api/v1/actions/system.echo", data=body, content_type="application/json"
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.get_data(True)}")

        post()
        return [
            one_by_one("pipeline: system.echo invoke", lambda: pipeline.invoke(request), 50_000),
            one_by_one("http: POST system.echo (test client)", post, 10_000),
        ]
    finally:
        shutdown_app(app)


def table(rows: list[Row]) -> str:
    header = ["benchmark", "calls", "us/call", "calls/s", "p50 us", "p99 us"]
    lines = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(cells) for cells in lines[1:])])


def main() -> int:
    started = time.perf_counter()
    print(f"Switchboard bench: Python {platform.python_version()} on {platform.machine()}")
    rows, note = validation_rows()
    rows.extend(app_rows())
    print(table(rows))
    if note:
        print(note)
    print(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
