"""``make bench``: Switchboard's speed, always beside a bare Flask route in the same run.

Run as ``python -m tests.bench.run`` from the project root (``make bench``). Five parts:

1. in process: params validation and the pipeline of ``system.echo`` (no network);
2. HTTP, side by side (``tests/bench/http.py``): the bare route on gunicorn gthread and on
   Switchboard's server, and Switchboard's public, JWT and API-key calls, in alternating
   rounds on 127.0.0.1 with the same worker count; medians, ratios, Redis round trips;
3. slow clients (``tests/bench/slow.py``): 200 trickling bodies against the server;
   Socket.IO (``tests/bench/realtime.py``): acks with 50 sockets, 2,000 idle sockets, and
   the public call on a Switchboard without realtime beside the one with it;
4. executions (``tests/bench/executions.py``): the echo action as a background call (202)
   against inline, on PostgreSQL and Redis; what 10,000 ``ctx.progress`` calls cost a job;
5. boot (``tests/bench/boot.py``): ``app.py check`` with 50 generated modules vs without.

The tables are printed and written to ``var/bench/<date>.json``. ``BENCH_ROUNDS`` and
``BENCH_SECONDS`` change the HTTP rounds and their length (defaults 5 and 4).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import ROOT, create_app
from core.actions.params import ParamSpec, ParamsValidator, compile_schema, object_schema
from core.contracts.calls import CallRequest
from core.transports.flask_app import shutdown_app
from core.transports.http import extension
from tests.bench import boot, executions, slow
from tests.bench import http as http_bench

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


def interleaved(fns: dict[str, Callable[[], Any]], calls: int, rounds: int = 10) -> list[Row]:
    """Time each call of every ``fns`` in alternating rounds, so drift in the machine's
    speed falls on all of them alike (an A/B within one process)."""
    for fn in fns.values():
        for _ in range(WARM_UP):
            fn()
    latencies: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    clock = time.perf_counter
    names = list(fns)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            fn, mine = fns[name], latencies[name]
            start = clock()
            for _ in range(calls // rounds):
                before = clock()
                fn()
                mine.append((clock() - before) * 1e6)
            spent[name] += clock() - start
    return [Row(name, len(latencies[name]), spent[name], latencies[name]) for name in names]


def app_rows() -> list[Row]:
    """(b) the in-process pipeline, with metrics and without (alternating rounds), and
    (c) HTTP through the Flask test client."""
    base = {"APP_ENV": "test", "SB_LOGGING__LEVEL": "WARNING"}
    app = create_app(base)
    bare = create_app({**base, "SB_METRICS__ENABLED": "false"})
    try:
        request = CallRequest(
            action="system.echo",
            params={"message": "hi"},
            request_id="bench",
            transport="bench",
        )
        pipeline, without = extension(app).pipeline, extension(bare).pipeline
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
        pipelines = {
            "pipeline: system.echo invoke": lambda: pipeline.invoke(request),
            "pipeline: system.echo invoke, metrics off": lambda: without.invoke(request),
        }
        return [
            *interleaved(pipelines, 50_000),
            one_by_one("http: POST system.echo (test client)", post, 10_000),
        ]
    finally:
        shutdown_app(bare)
        shutdown_app(app)


def _grid(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(cells) for cells in lines)])


def table(rows: list[Row]) -> str:
    header = ["benchmark", "calls", "us/call", "calls/s", "p50 us", "p99 us"]
    return _grid(header, [row.cells() for row in rows])


def http_table(result: http_bench.Result) -> str:
    gunicorn, server = result.targets[0], result.targets[1]
    lines = []
    for target in result.targets:
        rps = target.median("rps")
        trips = "-" if target.round_trips is None else f"{target.round_trips:.2f}"
        lines.append(
            [
                target.name,
                f"{rps:,.0f}",
                f"{target.median('p50_ms'):.2f}",
                f"{target.median('p99_ms'):.2f}",
                f"{target.ratio(gunicorn):.2f}",
                f"{target.ratio(server):.2f}",
                trips,
                str(sum(run.errors for run in target.runs)),
            ]
        )
    header = [
        f"HTTP, {result.workers} workers ({result.tool}, {result.rounds} rounds x "
        f"{result.seconds:g}s; medians, ratios per round)",
        "req/s",
        "p50 ms",
        "p99 ms",
        "x gunicorn",
        "x server",
        "redis trips",
        "errors",
    ]
    return _grid(header, lines)


def main() -> int:
    started = time.perf_counter()
    print(f"Switchboard bench: Python {platform.python_version()} on {platform.machine()}")
    rows, note = validation_rows()
    rows.extend(app_rows())
    print(table(rows))
    if note:
        print(note)
    result = http_bench.measure(
        rounds=int(os.environ.get("BENCH_ROUNDS", "5")),
        seconds=float(os.environ.get("BENCH_SECONDS", "4")),
        slow_clients=slow.measure,
    )
    print()
    print(http_table(result))
    trickle = result.slow
    if trickle is not None:
        print(
            f"\n{trickle.clients} slow clients (1 byte/s): /health/live "
            f"{trickle.live_ms_before:.1f} ms -> worst {trickle.live_ms_during:.1f} ms, "
            f"a call {trickle.call_ms_before:.1f} ms -> worst {trickle.call_ms_during:.1f} ms; "
            f"{trickle.cut_off}/{trickle.clients} answered 408 "
            f"within {trickle.cut_off_after_s:.1f}s (http.read_timeout 3s)"
        )
    if result.realtime_calls is not None:
        calls, idle = result.realtime_calls, result.realtime_idle
        print(
            f"\nSocket.IO, {calls.sockets} sockets calling system.echo: {calls.acks_per_s:,.0f} "
            f"acks/s, p50 {calls.p50_ms:.2f} ms, p99 {calls.p99_ms:.2f} ms, "
            f"{calls.errors} errors"
        )
        print(
            f"Socket.IO, {idle.connected}/{idle.sockets} idle sockets on one worker: "
            f"{idle.mib_per_1000:.1f} MiB per 1,000 (RSS {idle.rss_mib_before:.0f} -> "
            f"{idle.rss_mib_after:.0f} MiB), /health/live {idle.live_ms:.1f} ms meanwhile"
        )
    background = executions.measure(
        rounds=int(os.environ.get("BENCH_ROUNDS", "5")),
        seconds=float(os.environ.get("BENCH_SECONDS", "4")),
    )
    print(
        f"\nexecutions (PostgreSQL, Redis, audit stored; API key; medians of {background.rounds} "
        f"alternated rounds): inline {background.inline_rps:,.0f} req/s, background 202 "
        f"{background.background_rps:,.0f} req/s, ratio {background.ratio:.2f}; "
        f"{background.errors} errors"
    )
    print(
        f"executions, ctx.progress 10,000 times: {background.chatty_ms:.1f} ms against "
        f"{background.quiet_ms:.1f} ms without, ratio {background.progress_cost:.2f}"
    )
    booted = boot.measure()
    print(
        f"\nboot (app.py check, median of 3): shipped modules {booted.shipped_s:.2f}s, "
        f"+{booted.modules} modules / {booted.actions} actions {booted.generated_s:.2f}s, "
        f"ratio {booted.ratio:.2f}"
    )
    _save(rows, result, booted, background)
    print(f"total {time.perf_counter() - started:.1f}s")
    return 0


def _save(
    rows: list[Row],
    result: http_bench.Result,
    booted: boot.Boot,
    background: executions.Executions,
) -> None:
    folder = ROOT / "var" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    document = {
        "python": platform.python_version(),
        "in_process": [
            {"name": r.name, "calls": r.calls, "us_per_call": r.seconds / r.calls * 1e6}
            for r in rows
        ],
        "http": {
            "tool": result.tool,
            "workers": result.workers,
            "rounds": result.rounds,
            "seconds": result.seconds,
            "targets": [
                {
                    "name": t.name,
                    "rps": t.median("rps"),
                    "p50_ms": t.median("p50_ms"),
                    "p99_ms": t.median("p99_ms"),
                    "round_trips": t.round_trips,
                    "x_gunicorn": t.ratio(result.targets[0]),
                    "x_server": t.ratio(result.targets[1]),
                    "runs": [dataclasses.asdict(run) for run in t.runs],
                }
                for t in result.targets
            ],
            "slow_clients": dataclasses.asdict(result.slow) if result.slow else None,
            "realtime_calls": (
                dataclasses.asdict(result.realtime_calls) if result.realtime_calls else None
            ),
            "realtime_idle": (
                dataclasses.asdict(result.realtime_idle)
                | {"mib_per_1000": result.realtime_idle.mib_per_1000}
                if result.realtime_idle
                else None
            ),
        },
        "boot": dataclasses.asdict(booted) | {"ratio": booted.ratio},
        "executions": dataclasses.asdict(background)
        | {"ratio": background.ratio, "progress_cost": background.progress_cost},
    }
    path.write_text(json.dumps(document, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
