"""``core.testing``: test a module the way its callers use it.

``Harness.boot(boot, module_folder, tmp_path=...)`` boots the app with the module (a
SQLite file in ``tmp_path``, the in-process store; ``boot`` is app.py's, and its
``create_app`` works too), and then:

- ``harness.call("shop.add", {...}, as_=user("u1", "librarian"))`` runs the call through the
  whole chain (authorize, validate, rate limits, idempotency, audit) as that caller and
  returns an ``Answer`` (``status``, ``data``, ``problem``, ``body``). Callers:
  ``ANONYMOUS`` (the default), ``user(id, *roles)``, ``api_key(*scopes)``, ``SYSTEM``;
  ``harness.http`` is Flask's test client for the HTTP layer itself;
- ``harness.db.collection(name)`` and ``harness.cache`` read what the module stored;
- ``harness.run_executions()`` runs what background calls queued (a background call
  answers 202 with the record) and returns the finished records;
- ``harness.events(name)`` lists the hook events emitted (``HookEvent``: ``name``,
  ``data``), ``harness.pushes`` the realtime pushes delivered (``(event, data, target)``);
- ``Harness.boot(..., frozen=True)`` freezes time for the memory:// store's TTLs and the
  in-process rate limiters: ``harness.advance(61)`` moves it on (a real Redis keeps its own
  clock, so freeze only on memory://, the default here).

The harness is a transport: its calls go through the booted app's ``invoke`` as the
HTTP edge's do. The kernel never imports ``app.py``: the test hands ``boot`` over.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.base.errors import ActionError
from core.base.hooks import HookBus, HookEvent
from core.base.request_ids import new_request_id
from core.base.store import KeyValueStore
from core.contracts.cache import Cache
from core.contracts.calls import CallRequest
from core.contracts.context import ANONYMOUS, SYSTEM, Caller
from core.contracts.executions import Executions
from core.contracts.facades import Documents, Pushes
from core.runtime.booted import BootedApp
from core.transports.http import extension

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

__all__ = ["ANONYMOUS", "SYSTEM", "Answer", "FrozenClock", "Harness", "api_key", "user"]


def user(id: str = "user-1", *roles: str) -> Caller:
    """A signed-in user with ``roles``."""
    return Caller("user", id=id, roles=frozenset(roles))


def api_key(*scopes: str, id: str = "key-1") -> Caller:
    """An API key with ``scopes``."""
    return Caller("api_key", id=id, scopes=frozenset(scopes))


@dataclass(frozen=True)
class Answer:
    """What a caller gets: the status and the envelope or problem document."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status < 300

    @property
    def data(self) -> Any:
        """The answer's ``data``; an ``AssertionError`` showing the problem otherwise."""
        assert self.ok, f"expected 200, got {self.status}: {self.body.get('detail')}"
        return self.body["data"]

    @property
    def problem(self) -> str | None:
        """The problem's slug (``validation``, ``forbidden``, …), None on success."""
        return None if self.ok else str(self.body["type"]).rsplit("/", 1)[-1]


@dataclass
class FrozenClock:
    """A clock that moves only when told to."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    """One booted app and what a test reads from it (see the module docstring)."""

    runtime: BootedApp
    clock: FrozenClock | None = None
    emitted: list[HookEvent] = field(default_factory=list)
    pushes: list[tuple[str, Any, str]] = field(default_factory=list)

    @classmethod
    @contextmanager
    def boot(
        cls,
        boot: Callable[..., BootedApp | Flask],
        module: str | Path,
        *,
        tmp_path: str | Path,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        frozen: bool = False,
    ) -> Iterator[Harness]:
        """The app with the module in folder ``module``, shut down when the block ends."""
        folder = Path(module).resolve()
        environ = {
            "APP_ENV": "test",
            "DATABASE_URL": f"sqlite:///{Path(tmp_path).resolve()}/app.db",
            "REDIS_URL": "memory://",
            # The action's own limits are part of what a module test checks (the runtime's
            # own suite turns limits off in config/test.yaml).
            "SB_RATELIMIT__ENABLED": "true",
        }
        factory = sys.modules.get(boot.__module__)
        project = Path(factory.__file__).resolve().parent if factory and factory.__file__ else None
        if project is None or folder.parent != project / "modules":
            # Not in the project's own modules/ (loaded anyway): its parent is a module path.
            environ["MODULES_PATH"] = str(folder.parent)
        booted = boot({**environ, **(env or {})}, overrides=overrides)
        # create_app (tests written before boot) gives the Flask app of the booted one
        runtime = booted if isinstance(booted, BootedApp) else extension(booted).runtime
        harness = cls(runtime)
        try:
            harness._attach(frozen)
            yield harness
        finally:
            runtime.close()

    @property
    def app(self) -> Flask:
        """The Flask app of the booted app's routes."""
        flask_app = self.runtime.http
        if flask_app is None:
            raise RuntimeError("this app was booted without its HTTP edge")
        return flask_app

    def _attach(self, frozen: bool) -> None:
        bus = self.runtime.capability(HookBus)
        if bus is not None:
            # A listener on every event, run after the others: what was really emitted
            # (an undeclared event never gets here), and action.* fire since one listens.
            for event in sorted(bus.declared()):
                bus.register(
                    event, self.emitted.append, priority=10_000, owner="core.transports.testing"
                )
        pushes = self.runtime.capability(Pushes)
        if pushes is not None:
            pushes.watch(lambda event, data, target: self.pushes.append((event, data, target)))
        if frozen:
            self.clock = FrozenClock()
            self.runtime.use_clock(self.clock)

    # --- calling --------------------------------------------------------------------

    @property
    def http(self) -> FlaskClient:
        """Flask's test client: the HTTP layer too (headers, status codes, problem+json)."""
        return self.app.test_client()

    def call(
        self,
        action: str,
        params: Any = None,
        *,
        as_: Caller = ANONYMOUS,
        idempotency_key: str | None = None,
    ) -> Answer:
        """Run ``action`` through the whole chain as ``as_``."""
        request = CallRequest(
            action=action,
            params={} if params is None else params,
            request_id=new_request_id(),
            transport="test",
            caller=as_,
            idempotency_key=idempotency_key,
        )
        try:
            result = self.runtime.invoke(request)
            return Answer(result.status, dict(result.envelope))
        except ActionError as error:
            return Answer(error.status, error.problem(request.request_id))

    # --- reading --------------------------------------------------------------------

    @property
    def db(self) -> Documents:
        """The app's database, every collection (the runtime's ``sb_*`` ones too)."""
        found = self.runtime.capability(Documents)
        if found is None:
            raise RuntimeError("this app runs no database")
        return found

    @property
    def cache(self) -> Cache:
        """What ``ctx.cache`` reads and writes."""
        store = self.runtime.capability(KeyValueStore)
        if store is None:
            raise RuntimeError("this app runs no store")
        return Cache(store)

    def run_executions(self) -> list[dict[str, Any]]:
        """Run what background calls queued, in order, in this process; the finished
        records (``status``, ``result``, ``error``, ``progress``) as their callers see them."""
        executions = self.runtime.capability(Executions)
        if executions is None:
            raise RuntimeError("this app runs no executions manager")
        return executions.run_queued(self.runtime)

    def events(self, name: str | None = None) -> list[HookEvent]:
        """The hook events emitted so far (named ``name``, or all)."""
        return [e for e in self.emitted if name is None or e.name == name]

    def advance(self, seconds: float) -> None:
        """Move frozen time on (``boot(..., frozen=True)``)."""
        if self.clock is None:
            raise RuntimeError("time is not frozen: boot the harness with frozen=True")
        self.clock.advance(seconds)
