"""The bare route ``make bench`` measures against: a Flask view returning the envelope.

It does what any JSON endpoint does (parse the body, build and encode the envelope) and
nothing of Switchboard's: no credentials, limits, validation, audit or hooks. ``app`` is
what gunicorn serves; ``asgi()`` serves the same view on Switchboard's server stack
(uvicorn, the body read in the event loop, the view run in a thread pool).
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask, Response, request

from core.transports.asgi import WsgiBridge

app = Flask("bare")


@app.post("/api/v1/actions/system.echo")
def echo() -> Response:
    started = time.perf_counter()
    body = json.loads(request.get_data())
    envelope = {
        "data": {"message": body["message"]},
        "meta": {
            "action": "system.echo",
            "request_id": uuid.uuid4().hex,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    }
    return Response(json.dumps(envelope, separators=(",", ":")), mimetype="application/json")


@app.get("/health/live")
def live() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")


def asgi(threads: int = 8) -> WsgiBridge:
    """``uvicorn --factory tests.bench.bare:asgi``."""
    return WsgiBridge(app, ThreadPoolExecutor(threads), read_timeout=10.0, max_body=1024 * 1024)


def a2wsgi_app(threads: int = 8) -> Any:
    """The same view under uvicorn through a2wsgi (a candidate ``make bench`` measures):
    it streams the body into the thread as it arrives."""
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(app, workers=threads)  # type: ignore[arg-type]  # Flask is WSGI
