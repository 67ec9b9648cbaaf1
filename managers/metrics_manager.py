"""MetricsManager: Prometheus metrics on prometheus-client, served at ``GET /metrics``.

- **The call chain**: a middleware outside every other step counts each call by action and
  outcome (``ok`` or the problem's slug), times it, and counts the rate limiter's decision
  and why an unauthenticated call failed. An action name nobody declared is counted as
  ``unknown``: label values come from the registry and fixed lists only.
- **Managers** report the rest through ``Instruments`` (``core.metrics``): sockets and their
  messages, hook failures, database connections in use.
- **Several worker processes**: ``serve`` gives the workers one directory
  (``PROMETHEUS_MULTIPROC_DIR``) before prometheus-client is imported; each worker writes
  its values there and a scrape of any worker adds them all up. Gauges of a worker that
  exited are dropped at the next scrape. Without the directory (one process: the CLI, the
  tests' in-process apps), a registry of this app's own holds the values.
- **Access**: outside production anyone may scrape. In production only clients on
  ``metrics.allow`` or callers sending ``Authorization: Bearer <metrics.token>``, unless
  ``metrics.public``.
"""

from __future__ import annotations

import hmac
import importlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flask import Response, request

import core
from core.base.client_ip import Network, client_ip, in_networks, parse_networks
from core.base.errors import (
    AUTH_FAILURE_REASONS,
    ActionError,
    Banned,
    InternalError,
    RateLimited,
    Unauthorized,
)
from core.base.metrics import BREAKER_STATES, REALTIME_EVENTS, Instruments, process_running
from core.config.settings import Setting, boolean, strings, text
from core.contracts.calls import CallResult
from core.manager import Health, Manager, Route
from core.pipeline.audit import problem_slug
from core.pipeline.authorize import ActionRegistry
from core.pipeline.call import Call
from core.pipeline.chain import Middleware, Next

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import Metric

    from core.base.errors import Problem
    from core.config.config import Config
    from core.manager import App

_OWNER = "manager metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
# Seconds: a call is mostly sub-millisecond here; timeouts end at 30 s.
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
HEALTH_VALUE = {"ok": 1.0, "degraded": 0.5, "failed": 0.0}


class _Instruments:
    """The metric objects of one app (in multiprocess mode their values live in files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def made(kind: Any, name: str, doc: str, labels: Sequence[str], **kw: Any) -> Any:
            return kind(name, doc, list(labels), registry=registry, **kw)

        self.calls: Counter = made(
            Counter, "switchboard_action_calls", "Action calls by outcome", ("action", "outcome")
        )
        self.duration: Histogram = made(
            Histogram,
            "switchboard_action_duration_seconds",
            "Time from a call's arrival at the chain to its answer",
            ("action",),
            buckets=BUCKETS,
        )
        self.decisions: Counter = made(
            Counter,
            "switchboard_ratelimit_decisions",
            "Rate limiter decisions by the caller kind limited",
            ("kind", "decision"),
        )
        self.auth_failures: Counter = made(
            Counter, "switchboard_auth_failures", "Unauthenticated calls by reason", ("reason",)
        )
        self.sockets: Gauge = made(
            Gauge,
            "switchboard_realtime_sockets",
            "Connected Socket.IO sockets",
            (),
            multiprocess_mode="livesum",
        )
        self.messages: Counter = made(
            Counter,
            "switchboard_realtime_messages",
            "Socket.IO messages received, by event",
            ("event",),
        )
        self.hook_failures: Counter = made(
            Counter, "switchboard_hook_failures", "Hook callbacks that raised", ("event",)
        )
        self.pool: Gauge = made(
            Gauge,
            "switchboard_db_pool_in_use",
            "Database connections checked out",
            (),
            multiprocess_mode="livesum",
        )
        self.upstream: Counter = made(
            Counter,
            "switchboard_upstream_calls",
            "Calls to upstream services, by outcome (ok, 4xx, upstream-error, ...)",
            ("service", "outcome"),
        )
        self.upstream_duration: Histogram = made(
            Histogram,
            "switchboard_upstream_duration_seconds",
            "Time an upstream call took, retries included",
            ("service",),
            buckets=BUCKETS,
        )
        self.breaker: Gauge = made(
            Gauge,
            "switchboard_upstream_breaker_state",
            "Circuit breaker of a service: 0 closed, 1 half-open, 2 open (the worst worker)",
            ("service",),
            multiprocess_mode="max",
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._decisions: dict[tuple[str, str], Any] = {}

    def call(self, action: str, outcome: str, seconds: float) -> None:
        """One call: the labelled children are looked up once per (action, outcome)."""
        children = self._children.get((action, outcome))
        if children is None:
            children = (self.calls.labels(action, outcome), self.duration.labels(action))
            self._children[(action, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

    def decision(self, kind: str, decision: str) -> None:
        child = self._decisions.get((kind, decision))
        if child is None:
            child = self._decisions[(kind, decision)] = self.decisions.labels(kind, decision)
        child.inc()


class MetricsManager(Manager):
    name = "metrics"
    requires = ("config",)
    provides: ClassVar[tuple[type, ...]] = (Instruments,)
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting("metrics.enabled", boolean, True, "Count calls and serve them", owner=_OWNER),
        Setting("metrics.path", text, "/metrics", "Where Prometheus scrapes", owner=_OWNER),
        Setting(
            "metrics.public",
            boolean,
            False,
            "In production, let anyone scrape (default: metrics.allow and metrics.token only)",
            owner=_OWNER,
        ),
        Setting(
            "metrics.allow",
            strings,
            ("127.0.0.1/32", "::1/128"),
            "Clients (IPs or CIDRs) that may scrape in production",
            owner=_OWNER,
        ),
        Setting(
            "metrics.token",
            text,
            None,
            "A bearer token that may scrape in production (Authorization: Bearer …)",
            secret=True,
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        self._instruments: _Instruments | None = None
        self._registry: CollectorRegistry | None = None
        self._app: App | None = None
        self._registry_of_actions: ActionRegistry | None = None
        self._multiproc: Path | None = None
        self._path = "/metrics"
        self._open = True
        self._allow: tuple[Network, ...] = ()
        self._trusted: tuple[Network, ...] = ()
        self._token: bytes | None = None

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        from core.base.errors import Problem

        token = config["metrics.token"]
        if token is not None and len(str(token)) < 16:
            return [Problem("metrics.token must be at least 16 characters", field="metrics.token")]
        return []

    def start(self, app: App) -> None:
        config = app.config
        self._app = app
        if not config["metrics.enabled"]:
            return
        self._path = str(config["metrics.path"])
        if not self._path.startswith("/"):
            self._path = "/" + self._path
        self._open = not config.is_production or bool(config["metrics.public"])
        self._allow = parse_networks(config["metrics.allow"], "metrics.allow")
        self._trusted = parse_networks(config["http.trusted_proxies"])
        token = config["metrics.token"]
        self._token = str(token).encode() if token else None
        from prometheus_client import CollectorRegistry

        directory = os.environ.get(MULTIPROC_ENV)
        self._registry = CollectorRegistry()
        if directory:
            values = importlib.import_module("prometheus_client.values")
            if "Mmap" not in values.ValueClass.__name__:  # imported before serve set the dir
                raise RuntimeError(
                    f"{MULTIPROC_ENV} was set after prometheus_client was imported: "
                    "counts of this process would not reach the directory"
                )
            from prometheus_client import multiprocess

            self._multiproc = Path(directory)
            multiprocess.MultiProcessCollector(self._registry, path=directory)  # type: ignore[no-untyped-call]
            self._instruments = _Instruments(None)  # values go to the directory
        else:
            self._instruments = _Instruments(self._registry)
        self._registry.register(_AppCollector(self))

    def stop(self) -> None:
        instruments = self._instruments
        if instruments is not None:
            # This process's share of the live gauges ends. (Not mark_process_dead: with
            # one worker, serve's boot check and the worker are the same process, and the
            # worker's gauges would be written to files that were deleted.)
            instruments.sockets.set(0)
            instruments.pool.set(0)
        self._instruments = None

    def health(self) -> Health:
        if self._app is not None and not self._app.config["metrics.enabled"]:
            return Health("disabled")
        mode = "multiprocess" if self._multiproc is not None else "single process"
        return Health("ok" if self._instruments is not None else "failed", {"mode": mode})

    def capability(self, kind: type[Any]) -> Any:
        return self  # reports before start (or with metrics off) are dropped

    # --- Instruments ------------------------------------------------------------------

    def socket_opened(self) -> None:
        if self._instruments is not None:
            self._instruments.sockets.inc()

    def socket_closed(self) -> None:
        if self._instruments is not None:
            self._instruments.sockets.dec()

    def realtime_message(self, event: str) -> None:
        if self._instruments is not None:
            label = event if event in REALTIME_EVENTS else UNKNOWN
            self._instruments.messages.labels(label).inc()

    def auth_failed(self, reason: str) -> None:
        if self._instruments is not None:
            label = reason if reason in AUTH_FAILURE_REASONS else "invalid"
            self._instruments.auth_failures.labels(label).inc()

    def hook_failed(self, event: str) -> None:
        if self._instruments is not None:
            self._instruments.hook_failures.labels(event).inc()

    def pool_in_use(self, delta: int) -> None:
        if self._instruments is not None:
            self._instruments.pool.inc(delta)

    def upstream_call(self, service: str, outcome: str, seconds: float) -> None:
        if self._instruments is not None:
            self._instruments.upstream.labels(service, outcome).inc()
            self._instruments.upstream_duration.labels(service).observe(seconds)

    def breaker_changed(self, service: str, state: str) -> None:
        if self._instruments is not None:
            self._instruments.breaker.labels(service).set(BREAKER_STATES.index(state))

    # --- the call chain ---------------------------------------------------------------

    def middleware(self) -> Sequence[Middleware]:
        if self._instruments is None:
            return ()
        return (Middleware("metrics", self._measure, before="audit"),)

    def _measure(self, call: Call, next: Next) -> CallResult:
        instruments = self._instruments
        if instruments is None:
            return next(call)
        try:
            result = next(call)
        except ActionError as error:
            self._count(instruments, call, error.slug, error)
            raise
        except Exception:
            self._count(instruments, call, InternalError.slug, None)
            raise
        # A replayed failure is counted by the slug of its stored problem.
        outcome = "ok" if result.status < 400 else problem_slug(result.body)
        self._count(instruments, call, outcome, None)
        return result

    def _count(
        self, instruments: _Instruments, call: Call, outcome: str, error: ActionError | None
    ) -> None:
        instruments.call(self._action_label(call), outcome, time.perf_counter() - call.started)
        limits = call.gate.limits
        if limits is not None:
            if isinstance(error, Banned):
                decision = "banned"
            elif isinstance(error, RateLimited):
                decision = "limited"
            else:
                decision = "allowed"
            instruments.decision(limits.kind, decision)
        if isinstance(error, Unauthorized):
            self.auth_failed(error.reason)

    def _action_label(self, call: Call) -> str:
        if call.found is not None:
            return call.found.spec.name
        registry = self._registry_of_actions
        if registry is None and self._app is not None:
            registry = self._registry_of_actions = self._app.capability(ActionRegistry)
        name = call.request.action
        return name if registry is not None and registry.lookup(name) is not None else UNKNOWN

    # --- GET /metrics -----------------------------------------------------------------

    def routes(self) -> list[Route]:
        if self._instruments is None:
            return []
        return [Route(self._path, "metrics", self._view, probe=True)]

    def _view(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if not self._may_scrape():
            from core.base.errors import Forbidden

            raise Forbidden("metrics are served to metrics.allow clients or metrics.token")
        if self._multiproc is not None:
            self._drop_exited_workers(self._multiproc)
        registry = self._registry
        if registry is None:
            from core.base.errors import DependencyUnavailable

            raise DependencyUnavailable("metrics are not started")
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _may_scrape(self) -> bool:
        if self._open:
            return True
        authorization = request.headers.get("Authorization", "")
        scheme, _, given = authorization.partition(" ")
        token = self._token
        if token is not None and scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
        address = client_ip(
            request.remote_addr, request.headers.get("X-Forwarded-For"), self._trusted
        )
        return address is not None and in_networks(address, self._allow)

    @staticmethod
    def _drop_exited_workers(directory: Path) -> None:
        """Live gauges of worker processes that are gone (a crash, a restart) stop counting."""
        from prometheus_client import multiprocess

        for path in directory.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not process_running(int(pid)):
                multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


class _AppCollector:
    """Values read at scrape time from the scraping worker: the managers' health and the
    build."""

    def __init__(self, manager: MetricsManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily(
            "switchboard_build_info", "The running Switchboard", labels=["version"]
        )
        info.add_metric([core.__version__], 1.0)
        yield info
        app = self._manager._app
        if app is None:
            return
        up = GaugeMetricFamily(
            "switchboard_manager_up",
            "Each manager's health: 1 ok, 0.5 degraded, 0 failed (disabled ones are left out)",
            labels=["manager"],
        )
        _, checks = app.health()
        for name, check in checks.items():
            value = HEALTH_VALUE.get(str(check.get("status")))
            if value is not None:
                up.add_metric([name], value)
        yield up


def _same(given: str, token: bytes) -> bool:
    return hmac.compare_digest(given.encode(), token)
