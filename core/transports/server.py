"""``serve``: the ASGI app (``core.asgi``) under uvicorn, chosen by ``make bench``.

uvicorn (uvloop, httptools, websockets) owns sockets, workers and timeouts, its httptools
protocol bounded in the header phase (``core.server_protocol``); each worker
boots and stops its own app through the ASGI lifespan. SIGTERM stops accepting, lets
in-flight requests finish for ``shutdown.grace``, then stops the app; a worker that dies is
replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from core.base.metrics import process_running
from core.config.config import Config
from core.transports.server_protocol import HeadBounds, protocol


def serve(config: Config, factory: str, overrides: Mapping[str, Any]) -> None:
    """Serve ``factory`` (an import string ``module:function`` returning the ASGI app)
    with ``http.workers`` processes on ``http.host:http.port`` until signalled."""
    # Workers are new processes that load the config again: hand them the overrides.
    for key, value in overrides.items():
        os.environ["SB_" + key.replace(".", "__").upper()] = str(value)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found:
    # this one, so a clean stop exits 0.
    signal.signal(signal.SIGTERM, _stopped)
    bounds = HeadBounds.from_config(config)
    uvicorn.run(
        factory,
        factory=True,
        host=str(config["http.host"]),
        port=int(config["http.port"]),
        workers=int(config["http.workers"]),
        loop="uvloop",
        http=protocol(bounds),  # httptools, with the head of a request bounded as it arrives
        lifespan="on",
        ws="websockets-sansio",  # Socket.IO's WebSocket transport (the realtime manager)
        access_log=False,
        log_config=None,  # uvicorn's own records go through Switchboard's handler
        log_level=str(config["logging.level"]).lower(),
        timeout_graceful_shutdown=max(1, round(config["shutdown.grace"])),
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is judged by http.trusted_proxies
    )


# Where prometheus-client's multiprocess mode keeps each worker's values.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "switchboard-metrics-"


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """A directory the workers (and the boot check) share their metric values through,
    set in the environment before anything imports prometheus-client. An operator's own
    ``PROMETHEUS_MULTIPROC_DIR`` is emptied first (values of an earlier run would add up);
    one made here is removed afterwards, and those of earlier ``serve`` processes that
    were killed before they could remove theirs are removed at the next start."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    _remove_orphans(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))
    os.environ[METRICS_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(parent: Path) -> None:
    """Metrics directories whose ``serve`` process is gone (SIGKILL, a crash)."""
    for orphan in parent.glob(f"{METRICS_DIR_PREFIX}*-*"):
        owner = orphan.name[len(METRICS_DIR_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not process_running(int(owner)):
            shutil.rmtree(orphan, ignore_errors=True)


def _stopped(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)
