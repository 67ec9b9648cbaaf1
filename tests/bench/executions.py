"""``make bench``, executions: what answering with an execution costs, on PostgreSQL and
Redis with the audit trail stored.

1. HTTP: the same echo action inline (200) and as ``run: background`` (202, a record
   written, the job run by the serve workers' embedded runners meanwhile), in alternating
   rounds; the background rate over the inline one.
2. In process: a job that calls ``ctx.progress`` 10,000 times against one that does not
   (``executions.progress_interval`` at its default): the time of the first over the second.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench import load
from tests.bench.http import BODY, JSON, PYTHON, _process, credentials, switchboard_env
from tests.servers import PostgresServer, RedisServer, free_port

ACTIONS = """
actions:
  echo:
    handler: handlers:echo
    auth: any
    params:
      message: {type: string, maxLength: 10000, required: true}
  later:
    handler: handlers:echo
    auth: any
    run: background
    params:
      message: {type: string, maxLength: 10000, required: true}
  quiet:
    handler: handlers:quiet
    auth: any
    run: background
  chatty:
    handler: handlers:chatty
    auth: any
    run: background
"""
HANDLERS = """
def echo(ctx, *, message):
    return {'message': message}

def _work(ctx, report):
    total = 0
    for i in range(10_000):
        total += i * i
        if report:
            ctx.progress(i / 10_000, "working")
    return {"total": total}

def quiet(ctx):
    return _work(ctx, False)

def chatty(ctx):
    return _work(ctx, True)
"""


@dataclass
class Executions:
    inline_rps: float
    background_rps: float
    errors: int
    rounds: int
    quiet_ms: float
    chatty_ms: float

    @property
    def ratio(self) -> float:
        return self.background_rps / self.inline_rps

    @property
    def progress_cost(self) -> float:
        return self.chatty_ms / self.quiet_ms


def measure(*, rounds: int = 3, seconds: float = 4.0, workers: int = 2) -> Executions:
    work = Path(tempfile.mkdtemp(prefix="sbbenchx"))
    redis_server = RedisServer().start()
    postgres = PostgresServer().start()
    try:
        env = switchboard_env(work, redis_server.url(), workers)
        module = work / "modules" / "bench"
        (module / "actions.yaml").write_text(ACTIONS)
        (module / "handlers.py").write_text(HANDLERS)
        env["DATABASE_URL"] = postgres.create_database("benchx")
        env["SB_REDIS__PREFIX"] = "benchx:"
        _, key = credentials(env)
        headers = {**JSON, "X-API-Key": key}
        port = free_port()
        base = f"http://127.0.0.1:{port}/api/v1/actions/bench."
        command = [PYTHON, "app.py", "serve", "--port", str(port)]
        inline: list[float] = []
        background: list[float] = []
        errors = 0
        with _process(command, env, port, work / "serve.log"):
            for name in ("echo", "later"):
                load.run(base + name, BODY, headers, seconds=1)
            for _ in range(rounds):
                for name, rates in (("echo", inline), ("later", background)):
                    run = load.run(base + name, BODY, headers, seconds=seconds)
                    rates.append(run.rps)
                    errors += run.errors
        quiet_ms, chatty_ms = _progress_cost(env)
        return Executions(
            statistics.median(inline),
            statistics.median(background),
            errors,
            rounds,
            quiet_ms,
            chatty_ms,
        )
    finally:
        postgres.stop()
        redis_server.cleanup()


def _progress_cost(env: dict[str, str], runs: int = 7) -> tuple[float, float]:
    """Median milliseconds of the quiet and the chatty job, run in turn in this process."""
    from app import boot
    from core.base.request_ids import new_request_id
    from core.contracts.calls import CallRequest
    from core.contracts.context import SYSTEM
    from core.contracts.executions import Executions as ExecutionsCapability

    booted = boot({**env, "SB_HTTP__WORKERS": "1", "SB_LOGGING__LEVEL": "WARNING"})
    timings: dict[str, list[float]] = {"quiet": [], "chatty": []}
    try:
        executions = booted.capability(ExecutionsCapability)
        assert executions is not None
        for _ in range(runs):
            for name in ("quiet", "chatty"):
                request = CallRequest(f"bench.{name}", {}, new_request_id(), caller=SYSTEM)
                record = booted.invoke(request).value
                started = time.perf_counter()
                finished = executions.run_now(booted, record["id"])
                timings[name].append((time.perf_counter() - started) * 1000)
                assert finished is not None and finished["status"] == "succeeded", finished
    finally:
        with contextlib.suppress(Exception):
            booted.close()
    return statistics.median(timings["quiet"]), statistics.median(timings["chatty"])
