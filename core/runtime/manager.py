"""The Manager contract: what a manager contributes, and what the AppManager collects.

A manager is one file in ``managers/`` and one line in ``app.py``. Besides its lifecycle
(``start``, ``stop``, ``health``) it *declares* what it adds to the app, and the kernel
collects it; the kernel names no concrete manager:

- before any manager exists: its ``settings``, ``production_problems``, document sources
  for the config chain (``config_sources``), settings found on disk (``discover_settings``)
  and CLI ``commands``;
- once started: the typed capabilities it ``provides`` (Protocols defined in core, looked
  up by type), its handler ``facade`` (``ctx.<facade>``), ``middleware`` for the call
  chain, HTTP ``routes``, the hook ``events`` it emits, and its share of the phase after
  modules have loaded (``modules_loaded``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast, overload

from core.base.errors import DependencyUnavailable, Problem
from core.base.health import Health

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import AbstractContextManager
    from pathlib import Path

    from core.actions.actions import Action
    from core.config.config import Config
    from core.config.config_loader import SourceSpec
    from core.config.settings import Setting
    from core.contracts.calls import CallRequest, CallResult
    from core.contracts.context import Caller, ModuleScope
    from core.contracts.module import ModuleCatalog
    from core.pipeline.chain import Middleware

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """An HTTP route a manager serves (the JWKS, ``/metrics``, ...)."""

    path: str
    endpoint: str
    view: Callable[..., Any]
    methods: tuple[str, ...] = ("GET",)
    # Served by the probe threads, as the health checks are: answered even while every
    # call thread is busy (keep such views quick).
    probe: bool = False


@dataclass(frozen=True)
class AsgiMount:
    """An ASGI app a manager serves under ``prefix`` in every worker, beside the HTTP app
    (Socket.IO at ``/socket.io/``). ``startup(runtime, pool)`` runs in the worker's event
    loop once the app has booted (``runtime``: the booted app, the transport's one road to
    the pipeline; ``pool``: the worker's call threads); ``shutdown()`` before it stops.
    """

    prefix: str
    app: Callable[..., Awaitable[None]]
    startup: Callable[[Runtime, ThreadPoolExecutor], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None


class Manager:
    """Base class of every manager (see the module docstring for the contract).

    ``name`` is how ``requires`` lists refer to it; ``requires`` names every manager it
    uses (``require()`` refuses one it does not list); ``required`` says whether its
    ``failed`` health makes the app not ready. ``phase`` 1 starts after every phase-0
    manager: module loading, which needs them all.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[bool] = True
    phase: ClassVar[int] = 0
    settings: ClassVar[tuple[Setting, ...]] = ()
    provides: ClassVar[tuple[type, ...]] = ()
    facade: ClassVar[str | None] = None  # the ctx attribute handlers reach it by
    privileged: ClassVar[bool] = False  # its facade only for modules that require it
    events: ClassVar[tuple[str, ...]] = ()  # hook events it emits

    _owner: App | None = None  # set by the AppManager that registers it

    # --- declared before any manager exists -------------------------------------------

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        """What production refuses in this manager's settings (each naming the setting)."""
        return []

    @classmethod
    def config_sources(cls) -> tuple[SourceSpec, ...]:
        """Document sources this manager adds to the config chain (Vault's)."""
        return ()

    @classmethod
    def discover_settings(cls, bootstrap: Config) -> Sequence[Setting]:
        """Settings found on disk once ``modules.path`` is known (modules' ``config:``)."""
        return ()

    @classmethod
    def commands(cls) -> Sequence[Command]:
        """CLI commands (``python app.py <name>``) this manager adds."""
        return ()

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        """Connect, load and validate. Raise ``BootError`` with the place that is wrong."""

    def stop(self) -> None:
        """Release what ``start`` acquired.

        Called (in reverse start order) only for managers whose ``start`` returned; a
        ``start`` that raises must release what it acquired before raising.
        """

    def health(self) -> Health:
        return Health()

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Tests: read the time from ``clock`` from now on where this manager keeps time in
        the process (the memory:// store's TTLs, the in-process rate limiters); a real
        Redis keeps its own clock."""

    # --- contributed once started -----------------------------------------------------

    def capability(self, kind: type[T]) -> T:
        """The object that implements ``kind`` (one of ``provides``); the manager itself
        unless it hands out a part of itself (the store behind the cache, say)."""
        return cast(T, self)

    def facade_for(self, module: str) -> object:
        """What ``ctx.<facade>`` gives a handler of ``module``."""
        return self

    def middleware(self) -> Sequence[Middleware]:
        """Middleware for the call chain, each placed relative to a named built-in step."""
        return ()

    def routes(self) -> Sequence[Route]:
        return ()

    def asgi_mounts(self) -> Sequence[AsgiMount]:
        """ASGI apps served beside HTTP when ``serve`` runs (not under a WSGI server)."""
        return ()

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        """Read what the module manifests declare for this manager (state machines,
        secrets, hooks...), after every module was imported and before any initializes."""
        return ()

    # --- collaborators ----------------------------------------------------------------

    def require(self, kind: type[T]) -> T:
        """The collaborator that provides ``kind``; refused unless ``requires`` covers it."""
        if self._owner is None:
            raise RuntimeError(f"manager {self.name!r} is not registered with an app")
        return self._owner.capability_for(self, kind)

    def not_started(self) -> DependencyUnavailable:
        """The one error for work asked of a manager that is not running: 503."""
        return DependencyUnavailable(f"the {self.name} manager is not running")


M = TypeVar("M", bound=Manager)


class App(Protocol):
    """What a manager sees of the app that booted it (the ``AppManager``): its config,
    the other managers, capabilities by type, and what managers contributed."""

    config: Config

    def warn(self, problem: Problem) -> None: ...

    def has(self, name: str) -> bool: ...

    @overload
    def get(self, which: str) -> Manager: ...

    @overload
    def get(self, which: str, kind: type[M]) -> M: ...

    @overload
    def get(self, which: type[M]) -> M: ...

    def managers(self) -> Iterator[Manager]: ...

    def capability(self, kind: type[T]) -> T | None: ...

    def capability_for(self, manager: Manager, kind: type[T]) -> T: ...

    def declared_events(self) -> frozenset[str]: ...

    def middleware(self) -> list[tuple[str, Middleware]]: ...

    def routes(self) -> list[Route]: ...

    def asgi_mounts(self) -> list[AsgiMount]: ...

    def scope(self, module: str) -> ModuleScope: ...

    def names_in_use(self, kind: str) -> set[str]: ...

    def check_not_frozen(self, what: str) -> None: ...

    def publish_modules(self, catalog: ModuleCatalog) -> None: ...

    def health(self) -> tuple[bool, dict[str, dict[str, Any]]]: ...

    def __getattr__(self, name: str) -> Manager: ...


class Runtime(Protocol):
    """The booted app as every transport sees it (README "Writing a transport"): hand a
    ``CallRequest`` to ``invoke`` and send the ``CallResult``, or the problem of the
    ``ActionError`` it raises. The HTTP edge, Socket.IO, the CLI and the test harness each
    hold one; none reaches the pipeline another way."""

    @property
    def config(self) -> Config: ...

    @property
    def app(self) -> App:
        """The managers and their capabilities (what a transport rarely needs)."""
        ...

    def invoke(self, request: CallRequest) -> CallResult:
        """Run one call through the chain; raises ``ActionError`` when it fails."""
        ...

    def caller_of(self, request: CallRequest, *, count_failure: bool = True) -> Caller:
        """Who ``request``'s credential is (``Unauthorized`` otherwise), without a call:
        for a connection that identifies once and calls many times."""
        ...

    def actions(self) -> Sequence[Action]: ...

    def health(self) -> tuple[bool, dict[str, dict[str, Any]]]: ...

    def clock(self) -> float:
        """The time the app keeps (the harness may freeze it)."""
        ...


class CommandRuntime(Protocol):
    """What a manager's command works with (the CLI's ``Project``): the project's config,
    and the app booted for the length of a block."""

    root: Path

    def config(
        self, overrides: Mapping[str, Any] | None = None, *, quiet: bool = True
    ) -> Config: ...

    def booted_managers(self) -> AbstractContextManager[App]:
        """The app booted for the length of the block, as its ``AppManager``."""
        ...

    def call(
        self, action: str, params: Any, *, caller: Caller | None = ...
    ) -> tuple[int, dict[str, Any]]:
        """Run one action in an app booted for it (as the system caller by default):
        (exit code, envelope or problem)."""
        ...


@dataclass(frozen=True)
class Command:
    """One ``python app.py <name>`` command: its arguments and what it does."""

    name: str
    help: str
    # Called with the CLI's Project; a manager's command names it as ``CommandRuntime``.
    run: Callable[[argparse.Namespace, Any], int]
    configure: Callable[[argparse.ArgumentParser], None] = lambda parser: None
